"""SVD motion brush on diffusers' ``StableVideoDiffusionPipeline`` (0.31), without the WebUI.

One self-contained file, in the diffusers manner (../shared/docs/STYLE.md §5, §9.3):

* :class:`MotionBrushSettings` — the one validated settings model (UI, API, CLI);
* :func:`check_inputs` — every user mistake becomes a ``ValueError`` that says what was
  passed, what is allowed and what to do; soft fixes (resizing to multiples of 64, no
  mask painted) are returned as notes instead;
* :class:`MotionBrushRunner` — loads the model on demand, samples with
  :class:`~lib_vidguide.motion_brush.MotionBrushEulerScheduler`, composites the static
  region in pixel space, writes mp4/gif/webp and PNG frames atomically, and releases the
  model afterwards (unless ``keep_loaded``) so the WebUI's checkpoint gets its VRAM back;
* :func:`build_tiny_svd_components` / :func:`save_tiny_svd` — a random-weight SVD for
  tests and CPU smoke runs;
* :func:`register_cli` / :func:`run_cli` — ``motion-brush IMAGE MASK OUTPUT --model ...``.

Interrupts: a run checks ``should_interrupt()`` before loading, after every sampling step
and before decoding. When it returns true the run raises :class:`MotionBrushInterrupted`
and writes nothing: a short SVD clip cut off mid-sampling is pure noise, so there is no
partial result worth returning.

torch, diffusers and transformers are imported inside functions; importing this module
costs nothing at WebUI start-up.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import logging
import math
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence

import numpy as np
from pydantic import Field

from .motion_brush import composite_static, feathered_static_mask, mask_is_painted, mask_to_array
from .settings import PYDANTIC_V2, StrictModel

logger = logging.getLogger("vidguide")

__all__ = [
    "MotionBrushInterrupted",
    "MotionBrushResult",
    "MotionBrushRunner",
    "MotionBrushSettings",
    "CheckedInputs",
    "available_models",
    "build_tiny_svd_components",
    "check_inputs",
    "main",
    "open_image",
    "output_path_for",
    "output_size",
    "register_cli",
    "resolve_model",
    "run_cli",
    "save_tiny_svd",
    "settings_from_namespace",
    "write_animation",
    "write_frame_pngs",
]

# Models live in <WebUI models dir>/svd/<name>/ (a diffusers folder with model_index.json).
SVD_MODELS_SUBDIR = "svd"
EXAMPLE_HUB_ID = "stabilityai/stable-video-diffusion-img2vid-xt"
# SVD's VAE downsamples 8x and its UNet three more times (8x): pixel sizes must be multiples of 64.
SIZE_MULTIPLE = 64
# SVD was trained at 1024x576; larger images are scaled down to about this many pixels.
SVD_WORKING_AREA = 1024 * 576
OUTPUT_FORMATS = ("mp4", "gif", "webp")

# A hub id: "owner/name", nothing that looks like a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")

OutputFormat = Literal["mp4", "gif", "webp"]
ProgressCallback = Callable[[int, int], None]
InterruptCheck = Callable[[], bool]


class MotionBrushInterrupted(Exception):
    """The user interrupted the run; nothing was written and no partial frames are returned."""


# --------------------------------------------------------------------------- settings


class MotionBrushSettings(StrictModel):
    """One motion-brush run. Defaults follow the seed (USERS.md §B.1/§B.8), sized for 8-12 GB GPUs."""

    frames: int = Field(25, ge=2, le=64, description="Frames to generate (SVD-XT was trained on 25, SVD on 14).")
    steps: int = Field(25, ge=1, le=200, description="Euler sampling steps.")
    fps: int = Field(
        8, ge=1, le=60, description="Frame rate: conditions SVD's motion speed and is the output's frame rate."
    )
    motion_bucket_id: int = Field(30, ge=0, le=1023, description="SVD's motion amount: higher moves more.")
    noise_aug_strength: float = Field(
        0.02, ge=0.0, le=1.0, description="Noise added to the conditioning image: higher departs more from it."
    )
    min_guidance_scale: float = Field(1.0, ge=0.0, le=30.0, description="Image guidance on the first frame.")
    max_guidance_scale: float = Field(3.0, ge=0.0, le=30.0, description="Image guidance on the last frame.")
    decode_chunk_size: int = Field(
        4, ge=1, le=64, description="Frames the VAE decodes at once: lower uses less memory."
    )
    seed: int = Field(-1, ge=-1, le=2**32 - 1, description="Random seed; -1 picks one (and reports it).")
    max_steps_to_replace: Optional[int] = Field(
        None, ge=0, description="Hold the unpainted region still on the first K steps only; empty = every step, 0 = off."
    )
    composite: bool = Field(
        True, description="After decoding, paste frame 1 outside the paint so it is exactly still."
    )
    feather_px: int = Field(8, ge=0, le=256, description="Soft edge of that paste, inside the painted region (pixels).")
    width: Optional[int] = Field(
        None, ge=64, le=4096, description="Output width (multiple of 64); empty = from the image."
    )
    height: Optional[int] = Field(
        None, ge=64, le=4096, description="Output height (multiple of 64); empty = from the image."
    )
    output_format: OutputFormat = Field("mp4", description="Video file format.")
    cpu_offload: bool = Field(
        True, description="GPU only: keep each model in RAM until it runs (much less VRAM, a little slower)."
    )
    fp16: bool = Field(True, description="GPU only: half-precision weights (half the memory). CPU runs use float32.")
    keep_loaded: bool = Field(
        False, description="Keep the SVD model loaded between runs (faster, but the VRAM stays taken)."
    )


def _settings_fields() -> dict:
    return MotionBrushSettings.model_fields if PYDANTIC_V2 else MotionBrushSettings.__fields__


# --------------------------------------------------------------------------- input checks


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` made of the caller's input."""

    image: Any  # PIL RGB image at width x height
    mask: Optional[np.ndarray]  # float32 height x width in [0, 1], 1 = may move; None = the whole image moves
    width: int
    height: int
    model: str  # a local folder or a hub id
    notes: List[str] = field(default_factory=list)


def _snap(value: float) -> int:
    return max(SIZE_MULTIPLE, int(round(value / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def output_size(image_width: int, image_height: int, width: Optional[int], height: Optional[int]) -> tuple[int, int, list[str]]:
    """The size to generate at (multiples of 64) and the notes that explain any change."""
    notes: list[str] = []
    aspect = image_width / image_height
    if width is None and height is None:
        scale = min(1.0, math.sqrt(SVD_WORKING_AREA / (image_width * image_height)))
        target_w, target_h = image_width * scale, image_height * scale
        snapped = (_snap(target_w), _snap(target_h))
        if scale < 1.0:
            notes.append(
                f"The image ({image_width}x{image_height}) is larger than SVD's 1024x576 working area: "
                f"generating at {snapped[0]}x{snapped[1]}. Set width and height to choose another size."
            )
        elif snapped != (image_width, image_height):
            notes.append(
                f"The image is {image_width}x{image_height}, not a multiple of {SIZE_MULTIPLE}: "
                f"resized to {snapped[0]}x{snapped[1]}."
            )
        return snapped[0], snapped[1], notes
    target_w = float(width) if width is not None else height * aspect  # type: ignore[operator]
    target_h = float(height) if height is not None else width / aspect  # type: ignore[operator]
    snapped = (_snap(target_w), _snap(target_h))
    requested = [(name, value, got) for name, value, got in (("width", width, snapped[0]), ("height", height, snapped[1]))
                 if value is not None and value != got]
    if requested:
        listed = ", ".join(f"{name} {value} -> {got}" for name, value, got in requested)
        notes.append(f"SVD needs sizes that are multiples of {SIZE_MULTIPLE}: {listed}.")
    if abs((snapped[0] / snapped[1]) / aspect - 1.0) > 0.02:
        notes.append(
            f"The image ({image_width}x{image_height}) is stretched to {snapped[0]}x{snapped[1]}, "
            "another shape; give only width or only height to keep its shape."
        )
    return snapped[0], snapped[1], notes


def _image_to_pil(image: Any):
    """A PIL RGB image from a PIL image or a numpy array; clear errors for anything else."""
    from PIL import Image

    if image is None:
        raise ValueError("No image was given: upload or choose the still image to animate.")
    if isinstance(image, (str, Path)):
        image = open_image(image, "image")
    if isinstance(image, Image.Image):
        if image.width == 0 or image.height == 0:
            raise ValueError(f"The image is empty ({image.width}x{image.height} pixels): upload a real picture.")
        if image.mode in ("RGBA", "LA", "PA"):
            return image.convert("RGB")  # SVD has no alpha; the colours under it are kept
        return image.convert("RGB") if image.mode != "RGB" else image
    array = np.asarray(image)
    if array.dtype == object or array.ndim not in (2, 3):
        raise ValueError(
            f"The image is a {type(image).__name__} of shape {getattr(array, 'shape', '?')}; "
            "expected a PIL image or a (height, width, 3) uint8 array."
        )
    if 0 in array.shape[:2]:
        raise ValueError(f"The image is empty ({array.shape[1]}x{array.shape[0]} pixels): upload a real picture.")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
            raise ValueError(f"The image has dtype {array.dtype}; expected uint8 0..255 or finite floats 0..1.")
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise ValueError(f"The image has {array.shape[2]} channels; expected 3 (RGB) or 4 (RGBA).")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    return Image.fromarray(array).convert("RGB")


def open_image(path: str | Path, what: str = "image"):
    """Open an image file, with a message a user can act on when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ValueError(f"The {what} file '{resolved}' was not found; check the path.")
    try:
        with Image.open(resolved) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"Cannot read '{resolved}' as an {what} ({error}); give a PNG, JPEG or WebP file.") from error


def _models_hint(models_dir: Optional[Path]) -> str:
    where = Path(models_dir) / SVD_MODELS_SUBDIR if models_dir is not None else Path("models") / SVD_MODELS_SUBDIR
    return (
        f"Put a diffusers-format Stable Video Diffusion model (a folder with model_index.json, unet/, vae/, "
        f"image_encoder/, feature_extractor/ and scheduler/) in a folder under {where}, for example "
        f"`huggingface-cli download {EXAMPLE_HUB_ID} --local-dir {where / EXAMPLE_HUB_ID.split('/')[1]}`, "
        "then give that folder's name or path (or a Hugging Face hub id that is already downloaded)."
    )


def _checked_model_folder(folder: Path, models_dir: Optional[Path]) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise ValueError(f"'{folder}' is not a diffusers model folder (it has no model_index.json). {_models_hint(models_dir)}")
    try:
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
    except (OSError, ValueError) as error:
        raise ValueError(f"Cannot read '{index}' ({error}); download the model again.") from error
    if class_name and class_name != "StableVideoDiffusionPipeline":
        raise ValueError(
            f"'{folder}' holds a {class_name}, not Stable Video Diffusion: the motion brush needs an SVD "
            f"image-to-video model such as {EXAMPLE_HUB_ID}. {_models_hint(models_dir)}"
        )
    return str(folder)


def available_models(models_dir: Optional[Path]) -> list[str]:
    """Names of the SVD folders under ``models_dir/svd`` (for a dropdown)."""
    if models_dir is None:
        return []
    root = Path(models_dir) / SVD_MODELS_SUBDIR
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())


def resolve_model(model: Optional[str], models_dir: Optional[str | Path] = None) -> str:
    """A local SVD folder (by path, or by name under ``models_dir/svd``) or a hub id.

    Nothing is downloaded here; a hub id is returned as is and must already be cached
    when the WebUI runs offline (the loader then says so).
    """
    models_dir = Path(models_dir) if models_dir is not None else None
    model = (model or "").strip()
    if not model:
        found = available_models(models_dir)
        if len(found) == 1:
            return _checked_model_folder(Path(models_dir) / SVD_MODELS_SUBDIR / found[0], models_dir)  # type: ignore[arg-type]
        if found:
            raise ValueError(f"No SVD model was chosen; pick one of: {', '.join(found)}.")
        raise ValueError(f"No SVD model was given and none was found. {_models_hint(models_dir)}")
    path = Path(model).expanduser()
    if path.is_dir():
        return _checked_model_folder(path, models_dir)
    if path.is_file():
        raise ValueError(
            f"'{path}' is a single checkpoint file; the motion brush loads diffusers folders, not single "
            f"files. {_models_hint(models_dir)}"
        )
    if models_dir is not None and (models_dir / SVD_MODELS_SUBDIR / model).is_dir():
        return _checked_model_folder(models_dir / SVD_MODELS_SUBDIR / model, models_dir)
    looks_like_path = model.startswith((".", "/", "~", "\\")) or "\\" in model or model.count("/") != 1
    if _HUB_ID.fullmatch(model) and not looks_like_path:
        return model
    raise ValueError(f"The SVD model folder '{model}' was not found. {_models_hint(models_dir)}")


def check_inputs(
    image: Any,
    mask: Any,
    settings: MotionBrushSettings,
    *,
    model: Optional[str],
    models_dir: Optional[str | Path] = None,
) -> CheckedInputs:
    """Validate and prepare one run's input; raise a ``ValueError`` that teaches, or return notes.

    * no image, an empty (0x0) or unreadable image: error;
    * no mask, or a mask with nothing above 50 %: **not** an error. Decision: nothing
      painted means nothing is held still, so the whole image moves (plain SVD); a note
      says so;
    * a mask with NaN/inf, out-of-range values or another shape than the image: error;
    * sizes that are not multiples of 64: resized, with a note;
    * min guidance above max guidance: error;
    * a model folder that does not exist or is not an SVD diffusers folder: error that
      says where to put it (``models_dir/svd/<name>``).
    """
    if not isinstance(settings, MotionBrushSettings):
        raise ValueError(f"settings must be a MotionBrushSettings, got {type(settings).__name__}.")
    from PIL import Image

    picture = _image_to_pil(image)
    notes: list[str] = []
    width, height, size_notes = output_size(picture.width, picture.height, settings.width, settings.height)
    notes.extend(size_notes)

    # The mask is checked against the picture it was painted on, then follows the image's resize.
    mask_values = mask_to_array(mask, size=(picture.width, picture.height))
    if mask_values is not None and (picture.width, picture.height) != (width, height):
        mask_values = np.clip(
            np.asarray(Image.fromarray(mask_values, mode="F").resize((width, height), Image.BILINEAR), dtype=np.float32),
            0.0, 1.0,
        )
    if not mask_is_painted(mask_values):
        mask_values = None
        notes.append("No motion mask was painted: the whole image may move (plain SVD).")
    elif (mask_values > 0.5).all():
        notes.append("The mask covers the whole image: nothing is held still.")

    if settings.min_guidance_scale > settings.max_guidance_scale:
        raise ValueError(
            f"min_guidance_scale ({settings.min_guidance_scale}) is above max_guidance_scale "
            f"({settings.max_guidance_scale}): SVD ramps guidance from min on the first frame to max on the last. "
            "Swap them, or set both to the same value for constant guidance."
        )
    if mask_values is not None:
        limit = settings.max_steps_to_replace
        if limit == 0:
            notes.append(
                "max_steps_to_replace is 0: sampling ignores the mask"
                + (", only the pixel composite holds the region still." if settings.composite else ".")
            )
        elif limit is not None and limit >= settings.steps:
            notes.append(f"max_steps_to_replace ({limit}) is not below the {settings.steps} steps: every step is brushed.")

    resolved = resolve_model(model, models_dir)
    if picture.size != (width, height):
        picture = picture.resize((width, height), Image.LANCZOS)
    return CheckedInputs(image=picture, mask=mask_values, width=width, height=height, model=resolved, notes=notes)


# --------------------------------------------------------------------------- output files


def output_path_for(path: str | Path, output_format: str) -> Path:
    """The video path with the format's suffix; a conflicting suffix is an error."""
    path = Path(path)
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}.")
    suffix = path.suffix.lower().lstrip(".")
    if not suffix:
        return path.with_name(path.name + "." + output_format)
    if suffix != output_format:
        raise ValueError(
            f"The output '{path.name}' ends in .{suffix} but the format is {output_format}: "
            f"name it .{output_format} or choose the format {suffix}."
            if suffix in OUTPUT_FORMATS
            else f"The output '{path.name}' has the suffix .{suffix}; use .mp4, .gif or .webp."
        )
    return path


def write_animation(path: str | Path, frames: Any, fps: float, output_format: Optional[str] = None) -> Path:
    """Write RGB uint8 frames as mp4 (H.264), gif or webp; the file appears complete or not at all.

    ``frames`` may be any iterable (a generator that fails half-way leaves nothing behind).
    gif and webp merge identical consecutive frames into one longer frame (Pillow and
    libwebp do this), so their frame count can be lower for a still clip; timing is kept.
    """
    from .atomic import write_bytes_atomic

    path = Path(path)
    fmt = output_format or path.suffix.lower().lstrip(".")
    path = output_path_for(path, fmt)
    if not (fps > 0 and math.isfinite(fps)):
        raise ValueError(f"fps must be a positive number, got {fps!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "mp4":
        from .video_io import write_video

        write_video(path, frames, fps)
        return path
    from PIL import Image

    pictures = [Image.fromarray(_checked_frame(frame, index)) for index, frame in enumerate(frames)]
    if not pictures:
        raise ValueError(f"No frames to write to '{path}'.")
    sizes = {picture.size for picture in pictures}
    if len(sizes) > 1:
        raise ValueError(f"The frames have different sizes {sorted(sizes)}; every frame must have the same size.")
    buffer = io.BytesIO()
    duration_ms = max(1, int(round(1000.0 / fps)))
    options: dict = {"save_all": True, "append_images": pictures[1:], "duration": duration_ms, "loop": 0}
    if fmt == "webp":
        options.update(quality=90, method=4)
    pictures[0].save(buffer, format=fmt.upper(), **options)
    return write_bytes_atomic(path, buffer.getvalue())


def _checked_frame(frame: Any, index: int) -> np.ndarray:
    array = np.asarray(frame)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"Frame {index} is {array.dtype} {array.shape}; expected RGB uint8 (height, width, 3).")
    return array


def write_frame_pngs(frames: Sequence[np.ndarray], folder: str | Path) -> list[Path]:
    """``frame_00000.png`` ... in ``folder``, each written atomically."""
    from .atomic import save_png_atomic

    folder = Path(folder)
    return [save_png_atomic(folder / f"frame_{index:05d}.png", _checked_frame(frame, index)) for index, frame in enumerate(frames)]


# --------------------------------------------------------------------------- the runner


@dataclass
class MotionBrushResult:
    """A finished run. ``frames`` are RGB uint8 (height, width, 3)."""

    frames: List[np.ndarray]
    latents: Any  # the final latents, torch float32 on the CPU, (1, frames, 4, height/8, width/8)
    seed: int
    fps: int
    width: int
    height: int
    notes: List[str]
    model: str
    video_path: Optional[Path] = None
    frames_dir: Optional[Path] = None
    frame_paths: List[Path] = field(default_factory=list)
    static_weight: Optional[np.ndarray] = None  # the composite's weight of frame 1 (1 = exactly frame 1)
    brushed_steps: List[int] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)

    def pil_frames(self) -> list:
        from PIL import Image

        return [Image.fromarray(frame) for frame in self.frames]


def _check_interrupt(should_interrupt: Optional[InterruptCheck], where: str) -> None:
    if should_interrupt is not None and should_interrupt():
        raise MotionBrushInterrupted(f"Interrupted {where}; nothing was written.")


class MotionBrushRunner:
    """Loads SVD on demand, runs the motion brush, and gives the memory back afterwards.

    ``models_dir`` is the WebUI's models folder (models are looked up in ``models_dir/svd``);
    ``device`` defaults to CUDA when available, else the CPU. One runner serves many runs;
    it is not thread-safe (the WebUI queues jobs).
    """

    def __init__(self, models_dir: Optional[str | Path] = None, device: Optional[str] = None):
        self.models_dir = Path(models_dir) if models_dir is not None else None
        self.device = device
        self._pipe: Any = None
        self._loaded_key: Optional[tuple] = None
        self._scheduler_config: Optional[dict] = None

    # ------------------------------------------------------------------ loading

    @property
    def is_loaded(self) -> bool:
        return self._pipe is not None

    @property
    def pipeline(self) -> Any:
        """The loaded ``StableVideoDiffusionPipeline``, or None."""
        return self._pipe

    def _device(self):
        import torch

        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def load(self, model: str, settings: Optional[MotionBrushSettings] = None) -> Any:
        """Load (or reuse) the pipeline for ``model`` (a folder or hub id from :func:`resolve_model`)."""
        import torch

        settings = settings or MotionBrushSettings()
        device = self._device()
        on_gpu = device.type == "cuda"
        dtype = torch.float16 if settings.fp16 and on_gpu else torch.float32
        offload = settings.cpu_offload and on_gpu
        if not on_gpu and (settings.fp16 or settings.cpu_offload):
            logger.info("motion brush: fp16 and CPU offload apply to GPUs only; running in float32 on %s", device)
        key = (model, str(device), str(dtype), offload)
        if self._pipe is not None and self._loaded_key == key:
            return self._pipe
        self.release()
        pipe = _load_pipeline(model, dtype, self.models_dir)
        pipe.set_progress_bar_config(disable=True)
        if offload:
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        self._pipe, self._loaded_key = pipe, key
        self._scheduler_config = dict(pipe.scheduler.config)
        return pipe

    def release(self) -> bool:
        """Drop the model (and its offload hooks); on CUDA also return the cached VRAM. True if one was loaded."""
        pipe, self._pipe, self._loaded_key = self._pipe, None, None
        if pipe is None:
            return False
        try:
            pipe.remove_all_hooks()  # accelerate's offload hooks hold references to the modules
        except Exception:  # releasing must not fail; the references go with the pipeline anyway
            logger.debug("motion brush: removing offload hooks failed", exc_info=True)
        del pipe
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return True

    # ------------------------------------------------------------------ running

    def run(
        self,
        image: Any,
        mask: Any,
        settings: Optional[MotionBrushSettings] = None,
        *,
        model: Optional[str],
        output_path: Optional[str | Path] = None,
        frames_dir: Optional[str | Path] = None,
        write_frames: bool = True,
        progress: Optional[ProgressCallback] = None,
        should_interrupt: Optional[InterruptCheck] = None,
    ) -> MotionBrushResult:
        """Animate ``image``; the painted part of ``mask`` (1 = may move) moves, the rest stays still.

        ``progress(step, steps)`` is called after every sampling step. With ``output_path``
        the video is written there (``settings.output_format``), and with ``write_frames``
        the PNG frames go to ``frames_dir`` (default: the output path without its suffix).
        """
        settings = settings or MotionBrushSettings()
        timings: dict[str, float] = {}
        started = time.perf_counter()

        # 1. Check inputs: every mistake is reported before anything heavy is loaded.
        checked = check_inputs(image, mask, settings, model=model, models_dir=self.models_dir)
        video_path = output_path_for(output_path, settings.output_format) if output_path is not None else None
        if video_path is not None and write_frames and frames_dir is None:
            frames_dir = video_path.with_suffix("")
        notes = list(checked.notes)
        seed = settings.seed if settings.seed >= 0 else random.randrange(2**32)
        _check_interrupt(should_interrupt, "before loading the model")

        try:
            # 2. Load the pipeline on demand.
            import torch

            from .motion_brush import MotionBrushEulerScheduler

            pipe = self.load(checked.model, settings)
            trained_frames = getattr(pipe.unet.config, "num_frames", None)
            if trained_frames and trained_frames != settings.frames:
                notes.append(f"This model was trained for {trained_frames} frames; {settings.frames} were asked.")
            timings["load_s"] = time.perf_counter() - started

            # 3. A fresh brush scheduler per run, from the model's own scheduler config.
            scheduler = MotionBrushEulerScheduler.from_config(self._scheduler_config)
            scheduler.motion_mask = torch.from_numpy(checked.mask) if checked.mask is not None else None
            scheduler.max_steps_to_replace = settings.max_steps_to_replace
            pipe.scheduler = scheduler

            # 4. Sample to latents; the step callback reports progress and checks for an interrupt.
            def on_step_end(_pipe, index, _timestep, _tensors):
                if progress is not None:
                    progress(index + 1, settings.steps)
                _check_interrupt(should_interrupt, f"after step {index + 1} of {settings.steps}")
                return {}

            sampling_started = time.perf_counter()
            latents = pipe(
                checked.image,
                height=checked.height,
                width=checked.width,
                num_frames=settings.frames,
                num_inference_steps=settings.steps,
                min_guidance_scale=settings.min_guidance_scale,
                max_guidance_scale=settings.max_guidance_scale,
                fps=settings.fps,
                motion_bucket_id=settings.motion_bucket_id,
                noise_aug_strength=settings.noise_aug_strength,
                decode_chunk_size=settings.decode_chunk_size,
                generator=torch.Generator(device="cpu").manual_seed(seed),  # CPU: the same noise on any device
                output_type="latent",
                callback_on_step_end=on_step_end,
            ).frames
            timings["sampling_s"] = time.perf_counter() - sampling_started
            _check_interrupt(should_interrupt, "before decoding")

            # 5. Decode in chunks (the same calls the pipeline makes for output_type="np").
            decode_started = time.perf_counter()
            with torch.no_grad():
                video = pipe.decode_latents(latents, settings.frames, settings.decode_chunk_size)
                decoded = pipe.video_processor.postprocess_video(video=video, output_type="np")[0]
            pipe.maybe_free_model_hooks()
            frames = np.clip(np.rint(decoded * 255.0), 0, 255).astype(np.uint8)
            timings["decode_s"] = time.perf_counter() - decode_started
            final_latents = latents.detach().to("cpu", torch.float32)
            brushed_steps = scheduler.brushed_steps
        except BaseException:
            if self._pipe is not None:
                try:
                    self._pipe.maybe_free_model_hooks()  # an interrupted offloaded run leaves the UNet on the GPU
                except Exception:
                    logger.debug("motion brush: offloading after a failed run failed", exc_info=True)
            raise
        finally:
            if not settings.keep_loaded:
                self.release()

        # 6. Pixel composite: the temporal VAE decoder leaks motion into equal latents.
        static_weight = None
        if settings.composite and checked.mask is not None:
            static_weight = feathered_static_mask(checked.mask, settings.feather_px)
            frames = composite_static(frames, frames[0], checked.mask, settings.feather_px)
        frame_list = [np.ascontiguousarray(frame) for frame in frames]

        # 7. Write the files (each atomic); an interrupt here still leaves nothing behind.
        _check_interrupt(should_interrupt, "before writing")
        frame_paths: list[Path] = []
        if video_path is not None:
            write_animation(video_path, frame_list, settings.fps, settings.output_format)
        if write_frames and frames_dir is not None:
            frame_paths = write_frame_pngs(frame_list, frames_dir)
        timings["total_s"] = time.perf_counter() - started
        return MotionBrushResult(
            frames=frame_list, latents=final_latents, seed=seed, fps=settings.fps, width=checked.width,
            height=checked.height, notes=notes, model=checked.model, video_path=video_path,
            frames_dir=Path(frames_dir) if frame_paths else None, frame_paths=frame_paths,
            static_weight=static_weight, brushed_steps=brushed_steps, seconds=timings,
        )


def _load_pipeline(model: str, dtype: Any, models_dir: Optional[Path] = None) -> Any:
    """``StableVideoDiffusionPipeline.from_pretrained`` with errors a user can act on."""
    import torch
    from diffusers import StableVideoDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    # The fp16 variant halves the download and the load; folders without it load the float32 files as fp16.
    attempts: list[dict] = [{"variant": "fp16"}, {}] if dtype == torch.float16 else [{}]
    last_error: Optional[BaseException] = None
    for extra in attempts:
        try:
            return StableVideoDiffusionPipeline.from_pretrained(model, torch_dtype=dtype, **extra)
        except (OSError, ValueError, TypeError, KeyError) as error:
            last_error = error
    raise ValueError(
        f"Could not load a Stable Video Diffusion model from '{model}': {_one_line(last_error).rstrip('.')}. "
        f"{_models_hint(models_dir)}"
    ) from last_error


# --------------------------------------------------------------------------- tiny model for tests


TINY_SVD_FRAMES = 4


def build_tiny_svd_components(seed: int = 0, num_frames: int = TINY_SVD_FRAMES) -> dict:
    """A random-weight SVD from tiny configs: real classes, ``torch.manual_seed`` before each.

    UNetSpatioTemporal 32/64 channels, AutoencoderKLTemporalDecoder 32/32/64 (4x down, so a
    64x64 image gives 16x16 latents and a CPU run takes about a second), CLIP vision 32-d
    at 224 px / patch 32, and SVD's own Euler config (v-prediction, Karras sigmas 700 ->
    0.002, continuous timesteps). It draws nothing meaningful; every code path is real.
    """
    import torch
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, UNetSpatioTemporalConditionModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    embed_dim = 32
    torch.manual_seed(seed)
    unet = UNetSpatioTemporalConditionModel(
        sample_size=16,
        in_channels=8,  # noisy latents + the image latents, concatenated on channels
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=3 * 32,  # fps, motion bucket, noise aug
        layers_per_block=2,
        cross_attention_dim=embed_dim,
        num_attention_heads=2,
        num_frames=num_frames,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLTemporalDecoder(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        sample_size=64,
    )
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=embed_dim,
            projection_dim=embed_dim,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            image_size=224,  # the pipeline always resizes to 224 for CLIP
            patch_size=32,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=224, size=224)
    # stabilityai/stable-video-diffusion-img2vid-xt scheduler/scheduler_config.json
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        interpolation_type="linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        sigma_max=700.0,
        sigma_min=0.002,
        steps_offset=1,
        timestep_spacing="leading",
        timestep_type="continuous",
        use_karras_sigmas=True,
    )
    for module in (unet, vae, image_encoder):
        module.eval().requires_grad_(False)
    return {
        "unet": unet,
        "vae": vae,
        "image_encoder": image_encoder,
        "feature_extractor": feature_extractor,
        "scheduler": scheduler,
    }


def save_tiny_svd(directory: str | Path, seed: int = 0) -> Path:
    """Save the tiny SVD as a diffusers folder the runner and the CLI can load."""
    from diffusers import StableVideoDiffusionPipeline

    directory = Path(directory)
    pipeline = StableVideoDiffusionPipeline(**build_tiny_svd_components(seed))
    pipeline.save_pretrained(directory, safe_serialization=True)
    (directory / "VIDGUIDE_RANDOM_WEIGHTS.txt").write_text(
        "This model has random weights. It exercises every code path but draws no meaningful pictures.\n",
        encoding="utf-8",
    )
    return directory


# --------------------------------------------------------------------------- command line

CLI_COMMAND = "motion-brush"
_CLI_SKIP = ("keep_loaded",)  # one process, one run


def register_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``motion-brush IMAGE MASK OUTPUT --model ...`` to an argparse sub-command set.

    Options are generated from :class:`MotionBrushSettings`. The parser's default
    ``handler`` is :func:`run_cli`, so a caller dispatches with ``args.handler(args)``.
    """
    from .cli import add_model_options

    parser = subparsers.add_parser(
        CLI_COMMAND,
        help="animate a still image with Stable Video Diffusion; only the painted part moves",
        description="Animate IMAGE with Stable Video Diffusion. The white (or, in an RGBA layer, painted) part "
        "of MASK may move; the rest stays still. MASK 'none' lets the whole image move.",
    )
    parser.add_argument("image", help="the still image (PNG, JPEG, WebP)")
    parser.add_argument("mask", help="the motion mask: white/painted = may move; 'none' = the whole image moves")
    parser.add_argument("output", help="the video to write (.mp4, .gif or .webp; the suffix picks the format)")
    parser.add_argument("--model", required=True, help=f"SVD diffusers folder, a name under MODELS_DIR/svd, or a cached hub id ({EXAMPLE_HUB_ID})")
    parser.add_argument("--models-dir", default=None, help="the WebUI's models folder; --model may name a folder in its svd/")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--frames-dir", default=None, help="where the PNG frames go (default: OUTPUT without its suffix)")
    parser.add_argument("--no-frames", action="store_true", help="do not write the PNG frames")
    add_model_options(parser, MotionBrushSettings, skip=_CLI_SKIP)
    parser.set_defaults(handler=run_cli)
    return parser


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def settings_from_namespace(namespace: argparse.Namespace) -> MotionBrushSettings:
    given = {name: getattr(namespace, name) for name in _settings_fields() if getattr(namespace, name, None) is not None}
    return MotionBrushSettings.from_dict(given)


def run_cli(args: argparse.Namespace) -> int:
    """Run one ``motion-brush`` command: 0 on success, 2 with one ``error:`` line for bad input, 130 if interrupted."""
    try:
        output = Path(args.output)
        if getattr(args, "output_format", None) is None and output.suffix.lower().lstrip(".") in OUTPUT_FORMATS:
            args.output_format = output.suffix.lower().lstrip(".")
        settings = settings_from_namespace(args)
        image = open_image(args.image, "image")
        mask = None if str(args.mask).strip().lower() in ("none", "-", "") else open_image(args.mask, "mask")
        runner = MotionBrushRunner(models_dir=args.models_dir, device=args.device)

        def progress(step: int, steps: int) -> None:
            print(f"step {step}/{steps}", file=sys.stderr, flush=True)

        result = runner.run(
            image, mask, settings, model=args.model, output_path=output,
            frames_dir=args.frames_dir, write_frames=not args.no_frames, progress=progress,
        )
    except MotionBrushInterrupted as interrupted:
        print(f"interrupted: {interrupted}", file=sys.stderr)
        return 130
    except ValueError as error:  # includes pydantic's ValidationError
        print(f"error: {_one_line(error)}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({
        "output": str(result.video_path), "frames_dir": str(result.frames_dir) if result.frames_dir else None,
        "frames": len(result.frames), "seed": result.seed, "fps": result.fps, "size": [result.width, result.height],
        "brushed_steps": len(result.brushed_steps), "notes": result.notes,
    }))
    return 0
