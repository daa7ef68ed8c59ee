"""The SVD motion brush inside the WebUI: where models and outputs go, one runner per process,
the host's progress and interrupt, and the REST routes.

A run here is :class:`~lib_vidguide.svd_motion_brush.MotionBrushRunner` with the host's
folders and device:

* models: ``<WebUI models>/svd/<name>/`` (diffusers folders); the folder is created when
  missing so that the messages can point at a folder that exists;
* outputs: ``<data>/outputs/vidguide/motion-brush/<run id>.<fmt>`` and the PNG frames in
  ``<run id>/`` beside it, where the run id is ``<timestamp>-<seed>``: inside the default
  allowed roots, next to the WebUI's own outputs;
* the model is loaded per run and released afterwards unless ``keep_loaded``, so the SD
  checkpoint gets its VRAM back;
* progress goes into ``shared.state`` (sampling step and steps, textinfo) so the WebUI's
  progress bar and ``/sdapi/v1/progress`` follow a run; ``state.interrupted`` (the WebUI's
  Interrupt, ``/sdapi/v1/interrupt`` or this tab's button) stops it cleanly: nothing written.

Two entry points: :func:`run_here` for a caller that already holds the WebUI's queue lock
and has begun ``shared.state`` (the tab, through ``wrap_gradio_gpu_call``), and
:func:`run_with_queue_lock` for the API, which takes the lock and begins/ends the state itself
so that an API run never shares the GPU with a generation or a video job.

The routes (:func:`register_routes`) are added to the /vidguide/v1 router by ``api.py``,
with its auth and body-size checks.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations
# (the request and response models below) at runtime.
import base64
import binascii
import io
import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional

from pydantic import Field

from ..errors import UserInputError
from ..settings import StrictModel
from ..svd_motion_brush import (
    OUTPUT_FORMATS,
    SVD_MODELS_SUBDIR,
    MotionBrushInterrupted,
    MotionBrushRunner,
    MotionBrushSettings,
    available_models,
)
from . import host

logger = logging.getLogger("vidguide")

OUTPUT_SUBDIR = ("outputs", "vidguide", "motion-brush")
# <timestamp>-<seed>[-n]: the only names the download route looks up (nothing else reaches the disk).
RUN_ID = re.compile(r"\d{8}-\d{6}-\d{1,10}(?:-\d{1,3})?")
# A Hugging Face hub id ("owner/name"); anything else with a separator is a path on the server.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
# Images are decoded from these formats only (PIL can open formats with risky decoders, e.g. EPS).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
# SVD works near 1024x576; anything far larger is a mistake or an attack, refused before decoding.
MAX_IMAGE_PIXELS = 8192 * 8192
MEDIA_TYPES = {"mp4": "video/mp4", "gif": "image/gif", "webp": "image/webp"}


# --------------------------------------------------------------------------- folders


def models_dir() -> Path:
    """The WebUI's models folder (the runner looks in its svd/ subfolder)."""
    return host.models_path()


def svd_models_dir(create: bool = True) -> Path:
    """``<WebUI models>/svd``, created when missing so that messages name a folder that exists."""
    folder = models_dir() / SVD_MODELS_SUBDIR
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:  # a read-only models folder: the messages still say where models go
            logger.debug("motion brush: cannot create %s", folder, exc_info=True)
    return folder


def model_choices() -> List[str]:
    """The SVD model folders the tab's dropdown offers."""
    return available_models(models_dir())


def where_models_go() -> str:
    return (f"Put Stable Video Diffusion models (diffusers folders with model_index.json, e.g. "
            f"stable-video-diffusion-img2vid-xt) in {svd_models_dir()}.")


def output_dir() -> Path:
    return host.data_path().joinpath(*OUTPUT_SUBDIR)


def model_for_run(model: Optional[str]) -> str:
    """The model as the runner should get it: a folder name under <models>/svd (as its full path),
    a hub id, or "" (the only model there). Paths on the server are refused: callers name models,
    as they name tagger models, and cannot make the WebUI load any folder it can read."""
    name = (model or "").strip()
    folder = svd_models_dir()
    if not name:
        return ""
    if "/" in name or "\\" in name:
        if HUB_ID.fullmatch(name) and ".." not in name:
            return name
        raise UserInputError(
            f"The model {name[:200]!r} looks like a path; give the name of a folder in {folder} "
            f"(one of: {', '.join(model_choices()) or 'none yet'}) or a Hugging Face hub id such as "
            f"stabilityai/stable-video-diffusion-img2vid-xt. {where_models_go()}")
    if name in (".", "..") or len(name) > 255 or "\x00" in name:
        raise UserInputError(f"{name[:200]!r} is not a model folder name. {where_models_go()}")
    # A missing folder is reported by the runner's check, with the same hint.
    return str(folder / name)


# --------------------------------------------------------------------------- the runner


_runner: Optional[MotionBrushRunner] = None
_runner_lock = threading.Lock()


def runner() -> MotionBrushRunner:
    """One runner per process (it may keep a model loaded between runs); a new one, the old one
    released, when the models folder or the device changed."""
    global _runner
    wanted_dir, wanted_device = models_dir(), host.device()
    with _runner_lock:
        if _runner is None or _runner.models_dir != wanted_dir or _runner.device != wanted_device:
            if _runner is not None:
                _runner.release()
            _runner = MotionBrushRunner(models_dir=wanted_dir, device=wanted_device)
        return _runner


def release() -> bool:
    """Drop a model kept loaded by ``keep_loaded``; True if one was loaded."""
    with _runner_lock:
        return _runner.release() if _runner is not None else False


class _ActiveRun:
    """Whether a motion-brush run is under way here, so that Interrupt only stops one of ours."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = False

    def __enter__(self):
        with self._lock:
            self._active = True
        return self

    def __exit__(self, *exc):
        with self._lock:
            self._active = False

    @property
    def active(self) -> bool:
        return self._active


active_run = _ActiveRun()


def interrupt() -> bool:
    """Stop the running motion-brush run (the host's ``state.interrupt()``); False if none runs.
    The run stops after the current sampling step and writes nothing."""
    from modules.shared import state

    if not active_run.active:
        return False
    state.interrupt()
    logger.info("[+] VidGuide: motion brush interrupted")
    return True


# --------------------------------------------------------------------------- one run


@dataclass
class MotionBrushRun:
    """A finished run as the tab and the API report it."""

    run_id: str
    video_path: Path
    frames_dir: Optional[Path]
    frames: int
    seed: int
    fps: int
    width: int
    height: int
    output_format: str
    notes: List[str] = field(default_factory=list)


def _new_run_id(folder: Path, seed: int) -> str:
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}"
    run_id, number = stem, 1
    while any((folder / f"{run_id}.{fmt}").exists() for fmt in OUTPUT_FORMATS) or (folder / run_id).exists():
        number += 1
        run_id = f"{stem}-{number}"
    return run_id


def run_here(image: Any, mask: Any, *, model: Optional[str], settings: MotionBrushSettings,
             on_progress: Optional[Callable[[int, int], None]] = None) -> MotionBrushRun:
    """One run in the calling thread, which holds the WebUI's queue lock and has begun ``shared.state``.

    Raises ``ValueError`` (``UserInputError`` for the host's own checks) for bad input and
    :class:`MotionBrushInterrupted` when interrupted (nothing is written then).
    """
    from modules.shared import state

    if not isinstance(settings, MotionBrushSettings):
        raise UserInputError(f"settings must be MotionBrushSettings, got {type(settings).__name__}")
    resolved_model = model_for_run(model)
    # The seed is fixed here, not in the runner, because the file name carries it.
    seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
    settings = MotionBrushSettings.from_dict({**settings.to_dict(), "seed": seed})
    folder = output_dir()
    run_id = _new_run_id(folder, seed)

    state.job_count = 1
    state.job_no = 0
    state.sampling_step = 0
    state.sampling_steps = settings.steps
    state.textinfo = "Motion brush: loading the SVD model"

    def progress(step: int, steps: int) -> None:
        state.sampling_step, state.sampling_steps = step, steps
        state.textinfo = f"Motion brush: step {step}/{steps}" + (", then decoding" if step == steps else "")
        if on_progress is not None:
            on_progress(step, steps)

    def should_interrupt() -> bool:
        return bool(state.interrupted or getattr(state, "stopping_generation", False))

    with active_run:
        result = runner().run(
            image, mask, settings, model=resolved_model, output_path=folder / f"{run_id}.{settings.output_format}",
            progress=progress, should_interrupt=should_interrupt,
        )
    state.job_no = 1
    state.textinfo = None
    host.torch_gc()
    return MotionBrushRun(
        run_id=run_id, video_path=result.video_path, frames_dir=result.frames_dir, frames=len(result.frames),
        seed=result.seed, fps=result.fps, width=result.width, height=result.height,
        output_format=settings.output_format, notes=list(result.notes),
    )


def run_with_queue_lock(image: Any, mask: Any, *, model: Optional[str], settings: MotionBrushSettings,
                        job: str = "vidguide-motion-brush") -> MotionBrushRun:
    """:func:`run_here` for callers outside a UI request (the API): takes the WebUI's queue lock and
    begins and ends ``shared.state`` itself, as the WebUI's own API routes do."""
    from modules.call_queue import queue_lock
    from modules.shared import state

    with queue_lock:
        state.begin(job=job)
        try:
            return run_here(image, mask, model=model, settings=settings)
        finally:
            state.end()


def find_video(run_id: str) -> Path:
    """A finished run's video by its id; UserInputError 404 for anything else."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise UserInputError(f"unknown motion-brush run {run_id[:80]!r}", status_code=404)
    folder = output_dir()
    for fmt in OUTPUT_FORMATS:
        path = folder / f"{run_id}.{fmt}"
        if path.is_file():
            return path
    raise UserInputError(f"unknown motion-brush run {run_id!r} (no video with that id)", status_code=404)


# --------------------------------------------------------------------------- API input


def decode_base64_picture(text: Optional[str], what: str, *, required: bool):
    """A PIL image from base64 (or a ``data:`` URL) of a PNG, JPEG or WebP; UserInputError (422)
    naming ``what`` for anything else. An absent or empty optional value is None."""
    from PIL import Image, UnidentifiedImageError

    if text is None or not text.strip():
        if required:
            raise UserInputError(f"{what} is empty: send the picture as base64 PNG, JPEG or WebP (or a data: URL).")
        return None
    payload = text.strip()
    if payload.startswith("data:"):
        header, comma, payload = payload.partition(",")
        if not comma or ";base64" not in header:
            raise UserInputError(f"{what} is a data: URL without base64 data; send data:image/png;base64,<data>.")
    payload = "".join(payload.split())  # line-wrapped base64 (MIME style) is still base64
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise UserInputError(f"{what} is not valid base64 ({error}); send base64 of a PNG, JPEG or WebP file.") from error
    if not data:
        raise UserInputError(f"{what} is empty: send the picture as base64 PNG, JPEG or WebP.")
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise UserInputError(f"{what} is {opened.width}x{opened.height} pixels, over the limit of "
                                     f"{MAX_IMAGE_PIXELS} pixels; SVD works near 1024x576, send a smaller picture.")
            opened.load()
            picture = opened.copy()
    except UserInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise UserInputError(
            f"{what} is valid base64 but not a readable PNG, JPEG or WebP picture ({error}).") from error
    if picture.width == 0 or picture.height == 0:
        raise UserInputError(f"{what} is empty ({picture.width}x{picture.height} pixels).")
    return picture


# --------------------------------------------------------------------------- API routes


class MotionBrushRequest(StrictModel):
    """One motion-brush run: the still image, where it may move, the SVD model and the settings."""

    image: str = Field(..., description="The still image to animate: base64 of a PNG, JPEG or WebP file, "
                                        "or a data: URL.")
    mask: Optional[str] = Field(None, description=(
        "Where the image may move, the same size (or shape) as the image: base64 PNG/JPEG/WebP or a data: URL. "
        "White (or, with alpha, painted/opaque) = may move; black/transparent = stays still. Null, empty or "
        "nothing painted: the whole image moves (plain SVD), and a note says so."))
    model: str = Field("", max_length=300, description=(
        "The SVD model: the name of a folder in <WebUI models>/svd, or a Hugging Face hub id that is already "
        "downloaded; empty = the only folder there. Paths on the server are not accepted."))
    settings: MotionBrushSettings = Field(default_factory=MotionBrushSettings)


class MotionBrushResponse(StrictModel):
    run_id: str = Field(description="The run's id: <timestamp>-<seed>.")
    video_url: str = Field(description="GET it (with the same credentials) to download the video.")
    format: str = Field(description="mp4, gif or webp.")
    frames: int = Field(description="Frames in the video.")
    seed: int = Field(description="The seed used (a random one when -1 was asked).")
    fps: int
    width: int
    height: int
    notes: List[str] = Field(default_factory=list, description=(
        "What differs from the request: resized to multiples of 64, nothing painted (the whole image moved), ..."))


def request_body_limit() -> int:
    """POST /motion-brush: base64 of the image and of the mask within the upload limit, plus settings."""
    from .api import max_upload_bytes

    return max_upload_bytes() + (1 << 20)


def register_routes(router, http_error: Callable[[Exception], Any], prefix: str) -> None:
    """Add the motion-brush routes to the /vidguide/v1 router (auth and body size are checked by it)."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    @router.post("/motion-brush", response_model=MotionBrushResponse,
                 summary="Animate a still image with SVD; only the painted part moves (runs now, under the queue lock)",
                 responses={404: {"description": "unknown run"}, 409: {"description": "interrupted: nothing written"},
                            422: {"description": "bad image, mask, model or settings: the detail says which"}})
    def motion_brush(request: MotionBrushRequest) -> MotionBrushResponse:
        try:
            image = decode_base64_picture(request.image, "image", required=True)
            mask = decode_base64_picture(request.mask, "mask", required=False)
            run = run_with_queue_lock(image, mask, model=request.model, settings=request.settings)
        except MotionBrushInterrupted as error:
            raise HTTPException(status_code=409, detail=f"the motion-brush run was interrupted: {error}") from error
        except Exception as error:  # noqa: BLE001 - every bad input becomes a 4xx with its message
            failure = http_error(error)
            if failure.status_code >= 500:
                logger.exception("[-] VidGuide: motion brush failed")
            raise failure from error
        return MotionBrushResponse(
            run_id=run.run_id, video_url=f"{prefix}/motion-brush/{run.run_id}/video", format=run.output_format,
            frames=run.frames, seed=run.seed, fps=run.fps, width=run.width, height=run.height, notes=run.notes,
        )

    @router.get("/motion-brush/{run_id}/video", summary="Download a motion-brush video",
                responses={200: {"content": {media: {} for media in MEDIA_TYPES.values()}},
                           404: {"description": "unknown run"}})
    def motion_brush_video(run_id: str):
        try:
            path = find_video(run_id)
        except UserInputError as error:
            raise http_error(error) from error
        fmt = path.suffix.lstrip(".")
        return FileResponse(str(path), media_type=MEDIA_TYPES[fmt], filename=f"motion-brush-{run_id}.{fmt}")


__all__ = [
    "MotionBrushRequest", "MotionBrushResponse", "MotionBrushRun", "decode_base64_picture", "find_video",
    "interrupt", "model_choices", "model_for_run", "output_dir", "register_routes", "release", "request_body_limit",
    "run_here", "run_with_queue_lock", "runner", "svd_models_dir", "where_models_go",
]
