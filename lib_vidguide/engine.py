"""The video engine: decode, guide each frame by the previous output, encode.

Frame 1 is rendered unguided; frame n >= 2 is guided by frame n-1's output, warped
by the flow of the source video. While frame n is being diffused, a worker thread
decodes frame n+1 and computes its flows and weight map (they depend only on the
source), so the guidance's CPU cost stays off the critical path. Rendering itself
is delegated to a :class:`FrameRenderer`: the WebUI's ``process_images`` or the
standalone diffusers runner.

Every finished frame is kept on disk (a PNG, and its final latent when the renderer
gives one, written before the PNG), so a run can be resumed from the last finished
frame with exactly the state an uninterrupted run would have had: see
:func:`load_resume_state`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol

import numpy as np

from .settings import VideoSettings

if TYPE_CHECKING:
    import torch

    from .flow import FrameFlow

logger = logging.getLogger("vidguide")

LATENTS_KEPT = 2  # the previous frame's latent is all a resume needs (plus the first frame's)


class RenderInterrupted(Exception):
    """Raised by a renderer whose frame was cut short (the host's Interrupt mid-frame): the
    partial frame is not kept, and the run stops as interrupted."""


@dataclass
class RenderedFrame:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    latent: Optional["torch.Tensor"] = None  # final latent, when the renderer can give it (latent-space warping)
    skipped: bool = False  # the user skipped it: the image is a stand-in, not a diffused frame


@dataclass
class FrameGuideInput:
    """What frame n's guidance starts from: frame n-1's output and the motion since then;
    with drift control also the first output (``motion.anchor`` then holds the flow to it)."""

    previous_output: np.ndarray
    previous_latent: Optional["torch.Tensor"]
    motion: "FrameFlow"
    first: Optional[RenderedFrame] = None


class FrameRenderer(Protocol):
    def render(self, frame: np.ndarray, guide: Optional[FrameGuideInput], index: int) -> RenderedFrame:
        """Stylize one frame; ``guide`` is None for the first frame or an unguided run."""


@dataclass
class FrameEvent:
    index: int
    total: int
    source: np.ndarray
    output: np.ndarray
    weight: Optional[np.ndarray]
    seconds: float
    warp_error: Optional[float] = None
    skipped: bool = False


@dataclass
class ResumeState:
    """Where a run stopped: frames [0, done) are finished on disk."""

    done: int
    previous: RenderedFrame
    first: RenderedFrame


@dataclass
class VideoRunResult:
    output_path: Optional[Path]
    frames_written: int
    total_frames: int
    fps: Fraction
    size: tuple[int, int]
    interrupted: bool
    last_frame: Optional[np.ndarray] = None
    frame_seconds: list[float] = field(default_factory=list)
    warp_error_pairs: list[float] = field(default_factory=list)
    resumed_from: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class FramePlan:
    """Which source frames a run uses, at what size and frame rate.

    ``size`` is the render size; ``sizes`` says how source frames get there and what size
    the written video has (``sizes.output_size``: the source's in "pad" mode).
    """

    start: int
    stop: Optional[int]
    step: int
    total: int
    size: tuple[int, int]
    fps: Fraction
    source_fps: Fraction
    sizes: Any = None

    @property
    def video_size(self) -> tuple[int, int]:
        return self.sizes.output_size if self.sizes is not None else self.size


MIN_SIZE = 64  # the WebUI's smallest width/height


def plan_frames(source: str | os.PathLike, settings: VideoSettings) -> FramePlan:
    from .video_io import probe

    info = probe(source)
    sizes = settings.size_plan(info.width, info.height)
    size = sizes.size
    if min(size) < MIN_SIZE:
        raise ValueError(
            f"the output would be {size[0]}x{size[1]} (the video is {info.width}x{info.height}); VidGuide renders at "
            f"least {MIN_SIZE}x{MIN_SIZE}: set the output width and height to {MIN_SIZE} or more"
        )
    available = max(0, info.frame_count - settings.start_frame)
    total = -(-available // settings.every_nth)
    if settings.max_frames:
        total = min(total, settings.max_frames)
    stop = settings.start_frame + total * settings.every_nth if settings.max_frames else None
    source_fps = Fraction(info.fps or 24)
    if settings.fps:
        fps = Fraction(settings.fps).limit_denominator(1001)
    else:
        fps = source_fps / settings.every_nth
    return FramePlan(settings.start_frame, stop, settings.every_nth, total, size, fps, source_fps, sizes)


def frame_path(frames_dir: str | os.PathLike, index: int) -> Path:
    """Where frame ``index`` (0-based) of a run is kept: frame_000001.png for the first."""
    return Path(frames_dir) / f"frame_{index + 1:06d}.png"


def latent_path(frames_dir: str | os.PathLike, index: int) -> Path:
    return Path(frames_dir) / "latents" / f"frame_{index + 1:06d}.safetensors"


def finished_frames(frames_dir: str | os.PathLike) -> int:
    """How many frames from the first on are finished (a contiguous run of PNGs)."""
    count = 0
    while frame_path(frames_dir, count).exists():
        count += 1
    return count


def load_frame(frames_dir: str | os.PathLike, index: int) -> RenderedFrame:
    from PIL import Image

    with Image.open(frame_path(frames_dir, index)) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    latent = None
    path = latent_path(frames_dir, index)
    if path.exists():
        from safetensors.torch import load_file

        latent = load_file(str(path))["latent"]
    return RenderedFrame(rgb, latent)


def load_resume_state(frames_dir: str | os.PathLike) -> Optional[ResumeState]:
    """The state to continue a run from, or None when no frame is finished yet."""
    done = finished_frames(frames_dir)
    if done == 0:
        return None
    return ResumeState(done, load_frame(frames_dir, done - 1), load_frame(frames_dir, 0))


def _save_frame(frames_dir: Path, index: int, rendered: RenderedFrame) -> None:
    from .atomic import save_png_atomic, write_bytes_atomic

    if rendered.latent is not None:
        # Before the PNG: a finished frame (its PNG exists) always has its latent too.
        from safetensors.torch import save

        data = save({"latent": rendered.latent.detach().float().cpu().contiguous()})
        write_bytes_atomic(latent_path(frames_dir, index), data)
        stale = latent_path(frames_dir, index - LATENTS_KEPT)
        if index - LATENTS_KEPT > 0 and stale.exists():
            stale.unlink()
    save_png_atomic(frame_path(frames_dir, index), rendered.image)


def run_video(
    source: str | os.PathLike,
    output_path: Optional[str | os.PathLike],
    renderer: FrameRenderer,
    settings: VideoSettings,
    *,
    frames_dir: Optional[str | os.PathLike] = None,
    resume: Optional[ResumeState] = None,
    init_frame_for: Optional[Callable[[int], np.ndarray]] = None,
    measure: bool = True,
    on_plan: Optional[Callable[[FramePlan], None]] = None,
    on_frame: Optional[Callable[[FrameEvent], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> VideoRunResult:
    """Render every planned frame of ``source`` and write an H.264 mp4 to ``output_path``.

    The mp4 appears at ``output_path`` only when every planned frame was written; an
    interrupted run leaves no file there. With ``frames_dir`` every finished frame is
    saved there at once (PNG, plus its latent), and ``resume`` continues from them.
    ``init_frame_for(index)`` gives the img2img input when it is not the source frame
    (the second pass); flows always come from the source. ``measure`` accumulates the
    warp error of consecutive outputs from the flows the prefetcher computed anyway.
    """
    from .color import match_colors
    from .flow import FlowPrefetcher
    from .frame_prep import restore_frame
    from .video_io import VideoWriter, iter_frames

    plan = plan_frames(source, settings)
    if plan.total == 0:
        raise ValueError(
            f"no frames to render: the video has none at start frame {settings.start_frame}; lower the start frame"
        )
    if resume is not None and frames_dir is None:
        raise ValueError("resuming needs the frames folder of the interrupted run")
    if on_plan is not None:
        on_plan(plan)
    done = resume.done if resume is not None else 0
    frames_dir = Path(frames_dir) if frames_dir is not None else None
    # Start the stream at the last finished frame: it is the flow partner of the next one.
    offset = max(done - 1, 0)
    frames = _PreparedFrames(iter_frames(source, start=plan.start + offset * plan.step, stop=plan.stop, step=plan.step),
                             plan.sizes)
    guided = settings.guidance.enabled
    drift = settings.drift
    if guided or measure:
        anchor = None
        if guided and drift.first_frame_guide:
            anchor = "first" if done == 0 else next(iter(_PreparedFrames(
                iter_frames(source, start=plan.start, stop=plan.start + 1), plan.sizes)))
        # Both directions in two threads (FLOW.md §5.3): the prefetch of frame n+1 then costs
        # about one direction's time, well inside frame n's diffusion.
        method = settings.guidance.flow_method if guided else "dis_medium"
        stream = FlowPrefetcher(frames, method=method, weight_mode=settings.guidance.weight_mode, parallel=True,
                                anchor=anchor)
    else:
        stream = _Unguided(frames)

    writer = VideoWriter(output_path, fps=plan.fps, size=plan.video_size, crf=settings.crf) if output_path else None
    result = VideoRunResult(Path(output_path) if output_path else None, done, plan.total, plan.fps, plan.size, False,
                            resumed_from=done)
    previous = resume.previous if resume is not None else None
    first = resume.first if resume is not None else None
    try:
        if writer is not None:
            for index in range(done):
                writer.write(restore_frame(load_frame(frames_dir, index).image, plan.sizes))
        source_ended_early = False
        with stream:
            for position, frame, motion in stream:
                index = offset + position
                if index >= plan.total:
                    break
                if index < done:
                    continue
                if should_stop is not None and should_stop():
                    result.interrupted = True
                    break
                started = time.perf_counter()
                guide = None
                if guided and previous is not None and motion is not None:
                    guide = FrameGuideInput(previous.image, previous.latent, motion,
                                            first if drift.first_frame_guide else None)
                init = init_frame_for(index) if init_frame_for is not None else frame
                try:
                    rendered = renderer.render(init, guide, index)
                except RenderInterrupted:
                    result.interrupted = True
                    break
                _check_rendered(rendered, plan.size, index)
                if drift.color_correction and first is not None and not rendered.skipped:
                    rendered = RenderedFrame(match_colors(rendered.image, first.image), rendered.latent)
                pair_error = None
                if measure and previous is not None and motion is not None:
                    from .metrics import pair_warp_error

                    pair_error, _ = pair_warp_error(previous.image, rendered.image, motion.pair)
                    result.warp_error_pairs.append(pair_error)
                if frames_dir is not None:
                    _save_frame(frames_dir, index, rendered)
                if writer is not None:
                    writer.write(restore_frame(rendered.image, plan.sizes))
                if first is None:
                    first = rendered
                previous = rendered
                seconds = time.perf_counter() - started
                result.frames_written += 1
                result.frame_seconds.append(seconds)
                result.last_frame = rendered.image
                if on_frame is not None:
                    on_frame(FrameEvent(index, plan.total, frame, rendered.image,
                                        motion.weight if motion is not None else None, seconds, pair_error,
                                        rendered.skipped))
            else:
                source_ended_early = result.frames_written < plan.total
        if source_ended_early and not result.interrupted:
            # A truncated file decodes fewer frames than its header promised: the video made of
            # every decodable frame is complete, and says so.
            problems = "; ".join(getattr(frames, "problems", []) or [])
            result.notes.append(
                f"the source ended after {result.frames_written} of the {plan.total} frames its header announces "
                f"(truncated or damaged file){': ' + problems if problems else ''}"
            )
            result.total_frames = result.frames_written
        if result.last_frame is None and done:
            result.last_frame = previous.image
        if writer is not None:
            if result.interrupted or result.frames_written < result.total_frames or result.frames_written == 0:
                writer.abort()
                result.output_path = None
            else:
                writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return result


def _check_rendered(rendered: RenderedFrame, size: tuple[int, int], index: int) -> None:
    width, height = size
    if rendered.image.shape != (height, width, 3) or rendered.image.dtype != np.uint8:
        raise RuntimeError(
            f"frame {index} came back as {rendered.image.shape} {rendered.image.dtype}, expected ({height}, {width}, 3) "
            "uint8; the renderer changed the size (check the WebUI's width/height and resize mode)"
        )


class _PreparedFrames:
    """Decoded frames brought to the render size (resize, crop or pad), streaming.

    Its own iterator, so that whoever closes it (the flow prefetcher does) closes the reader.
    """

    def __init__(self, reader, sizes):
        self._reader = reader
        self._sizes = sizes

    @property
    def problems(self):
        return getattr(self._reader, "problems", [])

    def __iter__(self):
        return self

    def __next__(self):
        from .frame_prep import prepare_frame

        return prepare_frame(next(self._reader), self._sizes)

    def close(self):
        self._reader.close()


class _Unguided:
    """The prefetcher's shape without flows: (index, frame, None)."""

    def __init__(self, frames):
        self._frames = frames

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()

    def __iter__(self):
        for index, frame in enumerate(self._frames):
            yield index, frame, None
