"""Video editing inside the WebUI (issues 5 and 6): Tune-A-Video, Motion Inversion and AttentionFlow
with the host's folders, queue lock, progress bar and interrupt, and their REST routes.

* **Base models** are *named*, never given as paths: SD 1.x checkpoints or diffusers folders under
  ``<WebUI models>/Stable-diffusion`` (Tune-A-Video, AttentionFlow; empty = the checkpoint the
  WebUI has loaded), text-to-video diffusers folders under ``<WebUI models>/text2video`` (Motion
  Inversion; empty = the only one there).
* **Trained artefacts** live in ``<data>/outputs/vidguide/edit/trained/<artefact id>/``:
  ``training.json`` (method, status, progress, prompt, base model, source video, settings), the
  weights file once done, ``checkpoints/`` (the training loop's resumable checkpoints) and, for an
  uploaded source, ``source.<ext>``. An interrupted training keeps its newest checkpoint; training
  the same artefact again resumes from it (``resume="latest"``).
* **Edited videos** go to ``<data>/outputs/vidguide/edit/videos/<run id>.mp4`` (``-2``, ``-3``...
  for further prompts): inside the default allowed roots.
* Progress goes to ``shared.state`` (the WebUI's progress bar, ``/sdapi/v1/progress``); the WebUI's
  Interrupt (``state.interrupted``) or a training's cancel stops a run after its current step.

Trainings started over the API run in one worker thread, one at a time, each under the WebUI's queue
lock (the video jobs' worker class); the tab runs them in its own request (``wrap_gradio_gpu_call``
holds the lock). Edits run in the calling request, as the motion brush does.
"""

# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations.
import base64
import binascii
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from pydantic import Field

from ..errors import UserInputError
from ..paths import resolve_inside
from ..pipelines.attention_flow import AttentionFlowSettings
from ..pipelines.motion_inversion import MotionInversionGenerateSettings, MotionInversionSettings
from ..pipelines.tune_a_video import TuneAVideoEditSettings, TuneAVideoSettings
from ..settings import StrictModel
from . import host, jobs_host

logger = logging.getLogger("vidguide")

TUNE_A_VIDEO, MOTION_INVERSION, ATTENTION_FLOW = "tune-a-video", "motion-inversion", "attention-flow"
METHODS = (TUNE_A_VIDEO, MOTION_INVERSION, ATTENTION_FLOW)
TRAINABLE_METHODS = (TUNE_A_VIDEO, MOTION_INVERSION)
METHOD_LABELS = {TUNE_A_VIDEO: "Tune-A-Video", MOTION_INVERSION: "Motion Inversion", ATTENTION_FLOW: "AttentionFlow"}
_SHORT = {TUNE_A_VIDEO: "tav", MOTION_INVERSION: "mi", ATTENTION_FLOW: "af"}
_TRAIN_SETTINGS = {TUNE_A_VIDEO: TuneAVideoSettings, MOTION_INVERSION: MotionInversionSettings}

EDIT_SUBDIR = ("outputs", "vidguide", "edit")
SD_MODELS_SUBDIR = "Stable-diffusion"
T2V_MODELS_SUBDIR = "text2video"
MANIFEST = "training.json"
# <timestamp>-<method>-<random>: the only names the routes look up (nothing else reaches the disk).
ARTEFACT_ID = re.compile(r"\d{8}-\d{6}-(?:tav|mi)-[0-9a-f]{6}")
VIDEO_FILE = re.compile(r"\d{8}-\d{6}-(?:tav|mi|af)-[0-9a-f]{6}(?:-\d{1,2})?\.mp4")
MAX_PROMPTS = 8
MAX_PROMPT_CHARS = 2000
STATUSES = ("queued", "running", "done", "interrupted", "failed")


class EditInterrupted(Exception):
    """An edit or generation was interrupted; nothing was written."""


# --------------------------------------------------------------------------- folders and models


def edit_dir() -> Path:
    return host.data_path().joinpath(*EDIT_SUBDIR)


def trained_dir() -> Path:
    return edit_dir() / "trained"


def videos_dir() -> Path:
    return edit_dir() / "videos"


def _models_folder(subdir: str) -> Path:
    folder = host.models_path() / subdir
    try:
        folder.mkdir(parents=True, exist_ok=True)  # so that messages name a folder that exists
    except OSError:
        logger.debug("edit: cannot create %s", folder, exc_info=True)
    return folder


def sd_model_choices() -> List[str]:
    """SD 1.x single-file checkpoints and diffusers folders under <models>/Stable-diffusion."""
    from ..pipelines.sd_loading import available_base_models

    return available_base_models(host.models_path())


def t2v_model_choices() -> List[str]:
    """Text-to-video diffusers folders (model_index.json) under <models>/text2video."""
    root = host.models_path() / T2V_MODELS_SUBDIR
    if not root.is_dir():
        return []
    return sorted(entry.name for entry in root.iterdir() if (entry / "model_index.json").is_file())


def where_sd_models_go() -> str:
    return (f"Put an SD 1.x checkpoint (.safetensors, as the WebUI uses) or a diffusers folder in "
            f"{_models_folder(SD_MODELS_SUBDIR)}.")


def where_t2v_models_go() -> str:
    return (f"Put a text-to-video model in diffusers format (e.g. cerspense/zeroscope_v2_576w: model_index.json, "
            f"unet/ with a UNet3DConditionModel, vae/, text_encoder/, tokenizer/, scheduler/) in "
            f"{_models_folder(T2V_MODELS_SUBDIR)}.")


def current_checkpoint_file() -> Optional[Path]:
    """The checkpoint file the WebUI has loaded (``shared.sd_model.sd_checkpoint_info.filename``), if any."""
    try:
        from modules import shared
    except ImportError:
        return None
    info = getattr(getattr(shared, "sd_model", None), "sd_checkpoint_info", None)
    filename = getattr(info, "filename", None)
    if not filename:
        return None
    path = Path(filename)
    return path if path.is_file() else None


def _checked_name(name: str, folder: Path, choices: List[str], hint: str) -> str:
    """``name`` as one of ``choices`` (folder-relative names): callers cannot make the WebUI load
    any file it can read."""
    if "\x00" in name or len(name) > 300 or name.startswith(("/", "\\", "~")) or ".." in name.replace("\\", "/").split("/"):
        raise UserInputError(f"{name[:200]!r} is not a model name: give the name of a model in {folder} "
                             f"(one of: {', '.join(choices) or 'none yet'}). {hint}")
    if name not in choices:
        raise UserInputError(f"There is no model {name[:200]!r} in {folder} (found: {', '.join(choices) or 'none'}). "
                             f"{hint}")
    return str(folder / name)


def sd_model_for_run(name: Optional[str]) -> str:
    """The SD 1.x base model's path: a name under <models>/Stable-diffusion, or (empty) the WebUI's loaded checkpoint."""
    name = (name or "").strip()
    folder = _models_folder(SD_MODELS_SUBDIR)
    if not name:
        current = current_checkpoint_file()
        if current is not None:
            return str(current)
        choices = sd_model_choices()
        if len(choices) == 1:
            return str(folder / choices[0])
        raise UserInputError(f"No base model was chosen and the WebUI has no checkpoint loaded; choose one of: "
                             f"{', '.join(choices) or 'none yet'}. {where_sd_models_go()}")
    return _checked_name(name, folder, sd_model_choices(), where_sd_models_go())


def t2v_model_for_run(name: Optional[str]) -> str:
    """The text-to-video model's folder: a name under <models>/text2video, or (empty) the only one there."""
    name = (name or "").strip()
    folder = _models_folder(T2V_MODELS_SUBDIR)
    choices = t2v_model_choices()
    if not name:
        if len(choices) == 1:
            return str(folder / choices[0])
        raise UserInputError(f"Choose a text-to-video model (found: {', '.join(choices) or 'none'}). "
                             f"{where_t2v_models_go()}")
    return _checked_name(name, folder, choices, where_t2v_models_go())


# --------------------------------------------------------------------------- input checks


def checked_prompts(prompts: Any, what: str = "Edit prompt") -> List[str]:
    """One or more non-empty prompts (a list, or text with one prompt per line)."""
    if isinstance(prompts, str):
        prompts = prompts.splitlines()
    cleaned = [str(prompt).strip() for prompt in (prompts or []) if str(prompt).strip()]
    if not cleaned:
        raise UserInputError(f"{what}: give at least one prompt (one per line).")
    if len(cleaned) > MAX_PROMPTS:
        raise UserInputError(f"{what}: at most {MAX_PROMPTS} prompts at once (got {len(cleaned)}).")
    for prompt in cleaned:
        if len(prompt) > MAX_PROMPT_CHARS or "\x00" in prompt:
            raise UserInputError(f"{what}: each prompt must be plain text of at most {MAX_PROMPT_CHARS} characters.")
    return cleaned


def checked_source_prompt(prompt: Any, what: str) -> str:
    text = str(prompt or "").strip()
    if not text:
        raise UserInputError(f"{what} is empty: describe what the source video shows, e.g. 'a man is skiing'.")
    if len(text) > MAX_PROMPT_CHARS or "\x00" in text:
        raise UserInputError(f"{what} must be plain text of at most {MAX_PROMPT_CHARS} characters.")
    return text


def server_video(path_text: str) -> Path:
    """A video file on the server inside the allowed roots; 403 outside them, 422 for no file."""
    source = resolve_inside(path_text, host.allowed_roots(), what="video")
    try:
        is_file = source.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        is_file = False
    if not is_file:
        raise UserInputError(f"There is no video file at {path_text[:300]!r}.")
    return source


def checked_video(path: Path, shown_as: str, *, frames: Optional[int] = None, start: int = 0, stride: int = 1) -> None:
    """The file decodes as a video, and has enough frames for ``frames`` from ``start`` every ``stride``."""
    from ..video_io import probe

    try:
        info = probe(path)
    except ValueError as error:
        raise UserInputError(str(error).replace(str(path), shown_as)) from error
    if frames is not None and info.frame_count and start + (frames - 1) * stride >= info.frame_count:
        raise UserInputError(
            f"{shown_as} has {info.frame_count} frames; {frames} frames from frame {start}, every {stride}. frame, "
            "need more. Lower the frames, the stride or the start frame.")


def decode_base64_video(text: str, folder: Path) -> Path:
    """An inline video (base64 or a data: URL) written to ``folder``; 413 over the upload limit."""
    from .api import max_upload_bytes

    payload = text.strip()
    if payload.startswith("data:"):
        header, comma, payload = payload.partition(",")
        if not comma:
            raise UserInputError("source_base64 is a data: URL without data; send data:video/mp4;base64,<data>.")
    if len(payload) * 3 // 4 > max_upload_bytes():
        raise UserInputError(f"the video is larger than the upload limit of {max_upload_bytes() >> 20} MB; put it "
                             "in an allowed folder on the server and send source_path", status_code=413)
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise UserInputError("source_base64 is not valid base64") from error
    if not data:
        raise UserInputError("source_base64 is empty: send the video file's bytes as base64.")
    path = folder / "upload.video"
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- trained artefacts


@dataclass
class TrainingRecord:
    """``training.json`` of one trained (or training) artefact."""

    artefact_id: str
    method: str
    name: str
    status: str
    prompt: str
    model: str  # as chosen: a name under the models folder ("" = the WebUI's checkpoint at the time)
    model_path: str
    source: str  # the video trained on (a copy inside the artefact folder for uploads)
    settings: Dict[str, Any]
    steps_done: int = 0
    total_steps: int = 0
    last_loss: Optional[float] = None
    error: Optional[str] = None
    notes: List[str] = field(default_factory=list)
    created: float = 0.0
    updated: float = 0.0

    @property
    def folder(self) -> Path:
        return trained_dir() / self.artefact_id

    @property
    def weights_path(self) -> Path:
        from ..pipelines import motion_inversion, tune_a_video

        module = tune_a_video if self.method == TUNE_A_VIDEO else motion_inversion
        return self.folder / module.WEIGHTS_FILENAME

    @property
    def label(self) -> str:
        title = f"{self.name} · " if self.name else ""
        return f"{self.artefact_id} · {title}{METHOD_LABELS[self.method]} · {self.status}"

    def save(self) -> None:
        from ..atomic import write_bytes_atomic

        self.updated = time.time()
        write_bytes_atomic(self.folder / MANIFEST, json.dumps(asdict(self), indent=1).encode("utf-8"))

    def train_settings(self):
        return _TRAIN_SETTINGS[self.method].from_dict(self.settings)


_records_lock = threading.Lock()


def _new_artefact_id(method: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{_SHORT[method]}-{secrets.token_hex(3)}"


def get_record(artefact_id: str) -> TrainingRecord:
    """A trained artefact by its id; UserInputError 404 for anything else."""
    if not isinstance(artefact_id, str) or not ARTEFACT_ID.fullmatch(artefact_id):
        raise UserInputError(f"unknown trained artefact {str(artefact_id)[:80]!r}", status_code=404)
    path = trained_dir() / artefact_id / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainingRecord(**data)
    except FileNotFoundError:
        raise UserInputError(f"unknown trained artefact {artefact_id!r}", status_code=404) from None
    except (OSError, ValueError, TypeError) as error:
        raise UserInputError(f"the trained artefact {artefact_id!r} is damaged ({error})", status_code=409) from error


def effective_status(record: TrainingRecord) -> str:
    """A record left "running" or "queued" by a process that is gone reads "interrupted"."""
    if record.status in ("running", "queued") and not is_active(record.artefact_id):
        return "interrupted"
    return record.status


def list_records(method: Optional[str] = None) -> List[TrainingRecord]:
    """Every trained artefact, newest first (damaged folders are skipped)."""
    root = trained_dir()
    if not root.is_dir():
        return []
    records = []
    for entry in sorted(root.iterdir(), reverse=True):
        if not ARTEFACT_ID.fullmatch(entry.name):
            continue
        try:
            record = get_record(entry.name)
        except UserInputError:
            continue
        if method is None or record.method == method:
            records.append(record)
    return records


def create_training(method: str, source: Path, prompt: str, model: str, settings, *, copy_source: bool,
                    name: str = "", shown_as: Optional[str] = None) -> TrainingRecord:
    """Check everything a training needs, then make its artefact folder (status "queued")."""
    if method not in TRAINABLE_METHODS:
        raise UserInputError(f"{method!r} cannot be trained; choose one of {', '.join(TRAINABLE_METHODS)}.")
    if not isinstance(settings, _TRAIN_SETTINGS[method]):
        raise UserInputError(f"settings must be {_TRAIN_SETTINGS[method].__name__}")
    prompt = checked_source_prompt(prompt, "The training prompt")
    model_path = sd_model_for_run(model) if method == TUNE_A_VIDEO else t2v_model_for_run(model)
    checked_video(source, shown_as or repr(str(source)), frames=settings.frames, start=settings.sample_start,
                  stride=settings.sample_stride)
    name = " ".join(str(name or "").split())[:200]
    with _records_lock:
        artefact_id = _new_artefact_id(method)
        while (trained_dir() / artefact_id).exists():
            artefact_id = _new_artefact_id(method)
        folder = trained_dir() / artefact_id
        folder.mkdir(parents=True)
    if copy_source:
        # Uploads are kept, so that the training can resume and an edit can default to the trained video.
        suffix = "".join(c for c in source.suffix.lower()[1:8] if c.isascii() and c.isalnum()) or "video"
        kept = folder / f"source.{suffix}"
        shutil.copyfile(source, kept)
        source = kept
    now = time.time()
    record = TrainingRecord(
        artefact_id=artefact_id, method=method, name=name, status="queued", prompt=prompt, model=(model or "").strip(),
        model_path=model_path, source=str(source), settings=settings.to_dict(), total_steps=settings.max_train_steps,
        created=now, updated=now,
    )
    record.save()
    return record


def _training_state_text(record: TrainingRecord, step: int, total: int, loss: Optional[float]) -> str:
    loss_text = f", loss {loss:.4f}" if loss is not None else ""
    return f"{METHOD_LABELS[record.method]} training: step {step}/{total}{loss_text}"


def train_here(artefact_id: str, *, should_stop: Optional[Callable[[], bool]] = None,
               on_progress: Optional[Callable[[int, int], None]] = None) -> TrainingRecord:
    """Train (or resume) an artefact in the calling thread, which holds the WebUI's queue lock and has
    begun ``shared.state``. Interrupted: a checkpoint is kept and the record says "interrupted";
    failures are recorded ("failed", with the message) and re-raised."""
    from modules.shared import state

    from ..pipelines.motion_inversion import train_motion_inversion
    from ..pipelines.tune_a_video import train_tune_a_video

    record = get_record(artefact_id)
    if record.status == "done":
        raise UserInputError(f"the artefact {artefact_id!r} is already trained", status_code=409)
    settings = record.train_settings()
    with _active:
        _active_ids.add(artefact_id)
    record.status, record.error = "running", None
    record.save()
    state.job_count = 1
    state.job_no = 0
    state.sampling_step, state.sampling_steps = record.steps_done, settings.max_train_steps
    state.textinfo = f"{METHOD_LABELS[record.method]}: loading the base model"

    def progress(event) -> None:
        state.sampling_step, state.sampling_steps = event.step, event.total_steps
        state.textinfo = _training_state_text(record, event.step, event.total_steps, event.loss)
        record.steps_done, record.total_steps, record.last_loss = event.step, event.total_steps, float(event.loss)
        if event.checkpoint is not None or event.step == event.total_steps or event.step % 10 == 0:
            record.save()  # the API's status follows without a write per step
        if on_progress is not None:
            on_progress(event.step, event.total_steps)

    def should_interrupt() -> bool:
        return bool(state.interrupted or getattr(state, "stopping_generation", False)
                    or (should_stop is not None and should_stop()))

    train = train_tune_a_video if record.method == TUNE_A_VIDEO else train_motion_inversion
    try:
        result = train(record.source, record.prompt, settings, model=record.model_path, output_dir=record.folder,
                       models_dir=host.models_path(), device=host.device(), resume="latest", progress=progress,
                       should_interrupt=should_interrupt)
    except Exception as error:
        record.status = "failed"
        record.error = " ".join(str(error).split()) or type(error).__name__
        record.save()
        raise
    finally:
        with _active:
            _active_ids.discard(artefact_id)
        host.torch_gc()
    record.steps_done, record.total_steps = result.steps_done, result.total_steps
    record.last_loss = result.losses[-1] if result.losses else record.last_loss
    record.notes = list(dict.fromkeys(result.notes))
    record.status = "interrupted" if result.interrupted else "done"
    record.save()
    state.job_no = 1
    state.textinfo = None
    return record


_active = threading.Lock()
_active_ids: set = set()


def is_active(artefact_id: str) -> bool:
    """Training here now (tab or worker), or queued for the worker."""
    with _active:
        if artefact_id in _active_ids:
            return True
    return worker().position(artefact_id) is not None


class TrainingWorker(jobs_host.JobWorker):
    """API trainings one after another, each under the WebUI's queue lock (the video jobs' worker)."""

    def _run(self, artefact_id: str) -> None:
        from modules.shared import state

        with self.queue_lock:
            state.begin(job=f"vidguide-train-{artefact_id}")
            try:
                train_here(artefact_id, should_stop=lambda: artefact_id in self._cancel)
            finally:
                state.end()


_worker: Optional[TrainingWorker] = None


def worker() -> TrainingWorker:
    global _worker
    if _worker is None:
        from modules.call_queue import queue_lock

        _worker = TrainingWorker(queue_lock)
    return _worker


def submit_training(artefact_id: str) -> TrainingRecord:
    """Queue a training (new, interrupted or failed) for the worker."""
    record = get_record(artefact_id)
    if record.status == "done":
        raise UserInputError(f"the artefact {artefact_id!r} is already trained", status_code=409)
    if is_active(artefact_id):
        raise UserInputError(f"the artefact {artefact_id!r} is already queued or training", status_code=409)
    if not Path(record.source).is_file():
        raise UserInputError(f"the video {record.source!r} this artefact trains on is gone; start a new training",
                             status_code=409)
    record.status = "queued"
    record.save()
    worker().submit(artefact_id)
    return record


def cancel_training(artefact_id: str) -> TrainingRecord:
    """Stop a training after its current step (a checkpoint is kept), or take it out of the queue."""
    record = get_record(artefact_id)
    outcome = worker().cancel(artefact_id)
    if outcome == "dequeued" or (outcome == "idle" and record.status in ("queued", "running")
                                 and not is_active(artefact_id)):
        record.status = "interrupted"
        record.save()
    return get_record(artefact_id)


def delete_training(artefact_id: str) -> None:
    record = get_record(artefact_id)
    if is_active(artefact_id):
        raise UserInputError(f"the artefact {artefact_id!r} is training; interrupt it first", status_code=409)
    shutil.rmtree(record.folder)


def trained_record(artefact_id: str, method: str) -> TrainingRecord:
    """A finished artefact of ``method`` for an edit: 404 unknown, 409 not trained yet, 422 another method."""
    record = get_record(artefact_id)
    if record.method != method:
        raise UserInputError(f"the artefact {artefact_id!r} holds {METHOD_LABELS[record.method]} weights, not "
                             f"{METHOD_LABELS[method]} ones")
    if record.status != "done" or not record.weights_path.is_file():
        raise UserInputError(f"the artefact {artefact_id!r} is not trained yet (status: {effective_status(record)}); "
                             "finish or resume its training first", status_code=409)
    return record


# --------------------------------------------------------------------------- edits


@dataclass
class EditRun:
    run_id: str
    method: str
    videos: List[Path]
    prompts: List[str]
    frames: int
    width: int
    height: int
    fps: float
    notes: List[str] = field(default_factory=list)


def _new_run_id(method: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{_SHORT[method]}-{secrets.token_hex(3)}"


def edit_here(method: str, *, prompts: Any, settings, video: Optional[Path] = None, source_prompt: str = "",
              artefact_id: str = "", model: str = "", video_shown_as: Optional[str] = None,
              on_progress: Optional[Callable[[int, int], None]] = None) -> EditRun:
    """One edit (Tune-A-Video, AttentionFlow) or generation (Motion Inversion) in the calling thread, which
    holds the WebUI's queue lock and has begun ``shared.state``. ``EditInterrupted``: nothing written."""
    from modules.shared import state

    from ..pipelines import attention_flow, motion_inversion, tune_a_video

    if method not in METHODS:
        raise UserInputError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    prompt_list = checked_prompts(prompts)
    record = None
    if method == TUNE_A_VIDEO:
        if not isinstance(settings, TuneAVideoEditSettings):
            raise UserInputError("settings must be TuneAVideoEditSettings")
        record = trained_record(artefact_id, TUNE_A_VIDEO)
        if video is None:
            video = Path(record.source)
            if not video.is_file():
                raise UserInputError(f"the video this artefact was trained on ({record.source}) is gone; give the video "
                                     "to edit", status_code=409)
            video_shown_as = "the trained video"
        model_path = sd_model_for_run(model) if (model or "").strip() else record.model_path
    elif method == MOTION_INVERSION:
        if not isinstance(settings, MotionInversionGenerateSettings):
            raise UserInputError("settings must be MotionInversionGenerateSettings")
        record = trained_record(artefact_id, MOTION_INVERSION)
        model_path = t2v_model_for_run(model) if (model or "").strip() else record.model_path
    else:
        if not isinstance(settings, AttentionFlowSettings):
            raise UserInputError("settings must be AttentionFlowSettings")
        source_prompt = checked_source_prompt(source_prompt, "The source prompt")
        if (artefact_id or "").strip():  # optional: the seed's stage 1, Tune-A-Video weights of this video
            record = trained_record(artefact_id.strip(), TUNE_A_VIDEO)
        model_path = sd_model_for_run(model)
        if video is None:
            raise UserInputError("No source video: upload the video to edit, or give its path on the server.")
    if video is not None and method != MOTION_INVERSION:
        checked_video(Path(video), video_shown_as or repr(str(video)))

    run_id = _new_run_id(method)
    output = videos_dir() / f"{run_id}.mp4"
    state.job_count, state.job_no = 1, 0
    state.sampling_step, state.sampling_steps = 0, settings.num_inference_steps * len(prompt_list)
    state.textinfo = f"{METHOD_LABELS[method]}: loading the base model"

    def progress(step: int, steps: int) -> None:
        state.sampling_step, state.sampling_steps = step, steps
        state.textinfo = f"{METHOD_LABELS[method]}: step {step}/{steps}"
        if on_progress is not None:
            on_progress(step, steps)

    def should_interrupt() -> bool:
        return bool(state.interrupted or getattr(state, "stopping_generation", False))

    common = dict(model=model_path, models_dir=host.models_path(), device=host.device(), output_path=output,
                  progress=progress, should_interrupt=should_interrupt)
    with _edit_running:
        try:
            if method == TUNE_A_VIDEO:
                result = tune_a_video.edit_tune_a_video(str(video), prompt_list, record.weights_path, settings, **common)
            elif method == MOTION_INVERSION:
                result = motion_inversion.generate_motion_inversion(prompt_list, record.weights_path, settings, **common)
            else:
                result = attention_flow.edit_attention_flow(
                    str(video), source_prompt, prompt_list, settings,
                    weights=record.weights_path if record is not None else None, **common)
        except (tune_a_video.TuneAVideoInterrupted, motion_inversion.MotionInversionInterrupted,
                attention_flow.AttentionFlowInterrupted) as interrupted:
            raise EditInterrupted(str(interrupted)) from interrupted
        finally:
            host.torch_gc()
    notes = list(dict.fromkeys(result.notes))
    if video_shown_as and video is not None:
        notes = [note.replace(str(video), video_shown_as) for note in notes]
    first = result.videos[0]
    state.job_no = 1
    state.textinfo = None
    return EditRun(run_id=run_id, method=method, videos=list(result.output_paths), prompts=prompt_list,
                   frames=int(first.shape[0]), width=int(first.shape[2]), height=int(first.shape[1]),
                   fps=float(result.fps), notes=notes)


class _EditRunning:
    """Whether an edit runs here, so that the tab's Interrupt only stops one of ours."""

    def __init__(self):
        self.count = 0
        self._lock = threading.Lock()

    def __enter__(self):
        with self._lock:
            self.count += 1

    def __exit__(self, *exc):
        with self._lock:
            self.count -= 1


_edit_running = _EditRunning()


def interrupt() -> bool:
    """The tab's Interrupt: stop the running edit or training (after its current step); False if none runs here."""
    from modules.shared import state

    with _active:
        training = bool(_active_ids)
    if not training and _edit_running.count == 0:
        return False
    state.interrupt()
    logger.info("[+] VidGuide: edit interrupted")
    return True


def run_with_queue_lock(function: Callable[[], Any], job: str) -> Any:
    """``function()`` under the WebUI's queue lock with ``shared.state`` begun and ended (API calls)."""
    from modules.call_queue import queue_lock
    from modules.shared import state

    with queue_lock:
        state.begin(job=job)
        try:
            return function()
        finally:
            state.end()


def find_video(file_name: str) -> Path:
    """An edited video by its file name; UserInputError 404 for anything else."""
    if not isinstance(file_name, str) or not VIDEO_FILE.fullmatch(file_name):
        raise UserInputError(f"unknown edited video {str(file_name)[:80]!r}", status_code=404)
    path = videos_dir() / file_name
    if not path.is_file():
        raise UserInputError(f"unknown edited video {file_name!r}", status_code=404)
    return path


# --------------------------------------------------------------------------- API models


class _SourceFields(StrictModel):
    source_path: Optional[str] = Field(None, max_length=4096, description="A video file on the server, inside the "
                                                                          "allowed roots.")
    source_base64: Optional[str] = Field(None, description="A video sent inline: base64, or a data: URL (small files).")


class TuneAVideoTrainRequest(_SourceFields):
    """Train Tune-A-Video on one video (queued; runs under the WebUI's queue lock)."""

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description="What the video shows, e.g. 'a man is skiing'.")
    model: str = Field("", max_length=300, description=(
        "SD 1.x base model: the name of a checkpoint file or diffusers folder in <WebUI models>/Stable-diffusion; "
        "empty = the checkpoint the WebUI has loaded. Paths on the server are not accepted."))
    name: str = Field("", max_length=200, description="A label for the trained artefact.")
    settings: TuneAVideoSettings = Field(default_factory=TuneAVideoSettings)


class MotionInversionTrainRequest(_SourceFields):
    """Train Motion Inversion embeddings on one video (queued; runs under the WebUI's queue lock)."""

    prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description="What the video shows.")
    model: str = Field("", max_length=300, description=(
        "Text-to-video model: the name of a diffusers folder in <WebUI models>/text2video; empty = the only one."))
    name: str = Field("", max_length=200, description="A label for the trained artefact.")
    settings: MotionInversionSettings = Field(default_factory=MotionInversionSettings)


class TrainingInfo(StrictModel):
    artefact_id: str
    method: str
    name: str
    status: str = Field(description="queued, running, done, interrupted (resumable) or failed.")
    queue_position: Optional[int] = Field(None, description="0 while training, n when n-th in the queue.")
    steps_done: int
    total_steps: int
    progress: float = Field(description="Fraction of the training done, 0..1.")
    last_loss: Optional[float] = None
    prompt: str
    model: str
    error: Optional[str] = None
    notes: List[str] = Field(default_factory=list)
    created: float
    updated: float


class TrainingList(StrictModel):
    trainings: List[TrainingInfo]


class TuneAVideoEditRequest(_SourceFields):
    """Edit a video with trained Tune-A-Video weights (runs now, under the queue lock)."""

    artefact_id: str = Field(..., max_length=64, description="A finished Tune-A-Video training.")
    prompts: List[str] = Field(..., description=f"The edited prompts (1 to {MAX_PROMPTS}); one video each.")
    model: str = Field("", max_length=300, description="Base model name; empty = the one it was trained on.")
    settings: TuneAVideoEditSettings = Field(default_factory=TuneAVideoEditSettings)


class MotionInversionGenerateRequest(StrictModel):
    """Generate videos of new prompts with trained motion embeddings (runs now, under the queue lock)."""

    artefact_id: str = Field(..., max_length=64, description="A finished Motion Inversion training.")
    prompts: List[str] = Field(..., description=f"The prompts (1 to {MAX_PROMPTS}); one video each.")
    model: str = Field("", max_length=300, description="Text-to-video model name; empty = the one it was trained on.")
    settings: MotionInversionGenerateSettings = Field(default_factory=MotionInversionGenerateSettings)


class AttentionFlowRequest(_SourceFields):
    """Zero-shot AttentionFlow edit of a video (runs now, under the queue lock)."""

    source_prompt: str = Field(..., max_length=MAX_PROMPT_CHARS, description="What the video shows.")
    prompts: List[str] = Field(..., description=f"The edited prompts (1 to {MAX_PROMPTS}); one video each.")
    model: str = Field("", max_length=300, description=(
        "SD 1.x base model name in <WebUI models>/Stable-diffusion; empty = the checkpoint the WebUI has loaded."))
    artefact_id: str = Field("", max_length=64, description="Optional Tune-A-Video weights trained on this video.")
    settings: AttentionFlowSettings = Field(default_factory=AttentionFlowSettings)


class EditResponse(StrictModel):
    run_id: str
    method: str
    video_urls: List[str] = Field(description="GET each (with the same credentials) to download a video, one per prompt.")
    prompts: List[str]
    frames: int
    width: int
    height: int
    fps: float
    notes: List[str] = Field(default_factory=list)


def training_info(record: TrainingRecord) -> TrainingInfo:
    total = max(1, record.total_steps)
    return TrainingInfo(
        artefact_id=record.artefact_id, method=record.method, name=record.name, status=effective_status(record),
        queue_position=worker().position(record.artefact_id), steps_done=record.steps_done,
        total_steps=record.total_steps, progress=round(min(1.0, record.steps_done / total), 6),
        last_loss=record.last_loss, prompt=record.prompt, model=record.model, error=record.error,
        notes=list(record.notes), created=record.created, updated=record.updated,
    )


def request_body_limit() -> int:
    """POST /edit/...: base64 of the largest upload, plus prompts and settings."""
    from .api import max_upload_bytes

    return max_upload_bytes() * 4 // 3 + (1 << 20)


class _Source:
    """The request's video (server path or inline) as a file for the duration of a request."""

    def __init__(self, request: _SourceFields, *, required: bool):
        self.request, self.required = request, required
        self._folder: Optional[tempfile.TemporaryDirectory] = None
        self.path: Optional[Path] = None
        self.shown_as: Optional[str] = None
        self.uploaded = False

    def __enter__(self) -> "_Source":
        path_text, inline = self.request.source_path, self.request.source_base64
        if path_text and inline:
            raise UserInputError("give at most one of source_path or source_base64")
        if path_text:
            self.path = server_video(path_text)
            self.shown_as = repr(path_text[:300])
        elif inline:
            self._folder = tempfile.TemporaryDirectory(prefix="vidguide-edit-upload-")
            self.path = decode_base64_video(inline, Path(self._folder.name))
            self.shown_as, self.uploaded = "the inline video", True
        elif self.required:
            raise UserInputError("give the video: source_path (inside the allowed folders) or source_base64")
        return self

    def __exit__(self, *exc):
        if self._folder is not None:
            self._folder.cleanup()


# --------------------------------------------------------------------------- API routes


def register_routes(router, http_error: Callable[[Exception], Any], prefix: str) -> None:
    """Add the edit routes to the /vidguide/v1 router (auth and body size are checked by it)."""
    from fastapi import HTTPException
    from fastapi.responses import FileResponse

    def failure(error: Exception):
        if isinstance(error, EditInterrupted):
            return HTTPException(status_code=409, detail=f"interrupted: {error}")
        if isinstance(error, RecursionError):
            return HTTPException(status_code=422, detail="the request is nested too deeply")
        answer = http_error(error)
        if answer.status_code >= 500:
            logger.exception("[-] VidGuide: edit request failed")
        return answer

    def start_training(method: str, request) -> TrainingInfo:
        try:
            with _Source(request, required=True) as source:
                record = create_training(method, source.path, request.prompt, request.model, request.settings,
                                         copy_source=source.uploaded, name=request.name, shown_as=source.shown_as)
            submit_training(record.artefact_id)
            return training_info(get_record(record.artefact_id))
        except Exception as error:  # noqa: BLE001 - every bad input becomes a 4xx with its message
            raise failure(error) from error

    responses = {404: {"description": "unknown model or artefact"}, 409: {"description": "not ready, or interrupted"},
                 413: {"description": "inline video over the upload limit"},
                 422: {"description": "bad video, prompts, model or settings: the detail says which"}}

    @router.post("/edit/tune-a-video/train", response_model=TrainingInfo, responses=responses,
                 summary="Train Tune-A-Video on a video (queued; poll GET /edit/trainings/{artefact_id})")
    def train_tune_a_video_route(request: TuneAVideoTrainRequest) -> TrainingInfo:
        return start_training(TUNE_A_VIDEO, request)

    @router.post("/edit/motion-inversion/train", response_model=TrainingInfo, responses=responses,
                 summary="Train Motion Inversion embeddings on a video (queued; poll GET /edit/trainings/{artefact_id})")
    def train_motion_inversion_route(request: MotionInversionTrainRequest) -> TrainingInfo:
        return start_training(MOTION_INVERSION, request)

    @router.get("/edit/trainings", response_model=TrainingList, summary="Trained artefacts and trainings, newest first")
    def list_trainings() -> TrainingList:
        return TrainingList(trainings=[training_info(record) for record in list_records()])

    def record_or_error(artefact_id: str) -> TrainingRecord:
        try:
            return get_record(artefact_id)
        except UserInputError as error:
            raise http_error(error) from error

    @router.get("/edit/trainings/{artefact_id}", response_model=TrainingInfo, responses=responses,
                summary="A training's status and progress")
    def training_status(artefact_id: str) -> TrainingInfo:
        return training_info(record_or_error(artefact_id))

    @router.post("/edit/trainings/{artefact_id}/cancel", response_model=TrainingInfo, responses=responses,
                 summary="Stop a training after its current step (a resumable checkpoint is kept)")
    def cancel_training_route(artefact_id: str) -> TrainingInfo:
        record_or_error(artefact_id)
        try:
            return training_info(cancel_training(artefact_id))
        except Exception as error:  # noqa: BLE001
            raise failure(error) from error

    @router.post("/edit/trainings/{artefact_id}/resume", response_model=TrainingInfo, responses=responses,
                 summary="Continue an interrupted or failed training from its newest checkpoint")
    def resume_training_route(artefact_id: str) -> TrainingInfo:
        record_or_error(artefact_id)
        try:
            submit_training(artefact_id)
            return training_info(get_record(artefact_id))
        except Exception as error:  # noqa: BLE001
            raise failure(error) from error

    def edit_response(run: EditRun) -> EditResponse:
        return EditResponse(run_id=run.run_id, method=run.method, prompts=run.prompts, frames=run.frames,
                            width=run.width, height=run.height, fps=run.fps, notes=run.notes,
                            video_urls=[f"{prefix}/edit/videos/{path.name}" for path in run.videos])

    def edit(method: str, request, *, needs_source: bool) -> EditResponse:
        try:
            with _Source(request, required=needs_source) if method != MOTION_INVERSION else _NoSource() as source:
                run = run_with_queue_lock(lambda: edit_here(
                    method, prompts=request.prompts, settings=request.settings, video=source.path,
                    source_prompt=getattr(request, "source_prompt", ""), artefact_id=request.artefact_id,
                    model=request.model, video_shown_as=source.shown_as), job=f"vidguide-edit-{method}")
        except Exception as error:  # noqa: BLE001 - every bad input becomes a 4xx with its message
            raise failure(error) from error
        return edit_response(run)

    @router.post("/edit/tune-a-video/edit", response_model=EditResponse, responses=responses,
                 summary="Edit a video with trained Tune-A-Video weights (runs now; default video: the trained one)")
    def edit_tune_a_video_route(request: TuneAVideoEditRequest) -> EditResponse:
        return edit(TUNE_A_VIDEO, request, needs_source=False)

    @router.post("/edit/motion-inversion/generate", response_model=EditResponse, responses=responses,
                 summary="Generate videos with trained Motion Inversion embeddings (runs now)")
    def generate_motion_inversion_route(request: MotionInversionGenerateRequest) -> EditResponse:
        return edit(MOTION_INVERSION, request, needs_source=False)

    @router.post("/edit/attention-flow/edit", response_model=EditResponse, responses=responses,
                 summary="Zero-shot AttentionFlow edit of a video (runs now)")
    def edit_attention_flow_route(request: AttentionFlowRequest) -> EditResponse:
        return edit(ATTENTION_FLOW, request, needs_source=True)

    @router.get("/edit/videos/{file_name}", summary="Download an edited video (mp4)",
                responses={200: {"content": {"video/mp4": {}}}, 404: {"description": "unknown video"}})
    def edited_video(file_name: str):
        try:
            path = find_video(file_name)
        except UserInputError as error:
            raise http_error(error) from error
        return FileResponse(str(path), media_type="video/mp4", filename=file_name)


class _NoSource:
    path = None
    shown_as = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


__all__ = [
    "ATTENTION_FLOW", "METHODS", "MOTION_INVERSION", "TUNE_A_VIDEO", "EditInterrupted", "EditRun", "TrainingRecord",
    "cancel_training", "create_training", "edit_here", "find_video", "get_record", "interrupt", "list_records",
    "register_routes", "sd_model_choices", "submit_training", "t2v_model_choices", "train_here", "worker",
]
