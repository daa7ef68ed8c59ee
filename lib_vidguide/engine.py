"""The video engine: decode, guide each frame by the previous output, encode.

Frame 1 is rendered unguided; frame n >= 2 is guided by frame n-1's output, warped
by the flow of the source video. While frame n is being diffused, a worker thread
decodes frame n+1 and computes its flows and weight map (they depend only on the
source), so the guidance's CPU cost stays off the critical path. Rendering itself
is delegated to a :class:`FrameRenderer`: the WebUI's ``process_images`` or the
standalone diffusers runner.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Protocol

import numpy as np

from .settings import VideoSettings

if TYPE_CHECKING:
    import torch

    from .flow import FrameFlow

logger = logging.getLogger("vidguide")


@dataclass
class FrameGuideInput:
    """What frame n's guidance starts from: frame n-1's output and the motion since then."""

    previous_output: np.ndarray
    previous_latent: Optional["torch.Tensor"]
    motion: "FrameFlow"


@dataclass
class RenderedFrame:
    image: np.ndarray  # RGB uint8 (H, W, 3)
    latent: Optional["torch.Tensor"] = None  # final latent, when the renderer can give it (latent-space warping)


class FrameRenderer(Protocol):
    def render(self, frame: np.ndarray, guide: Optional[FrameGuideInput], index: int) -> RenderedFrame:
        """Stylize one source frame; ``guide`` is None for the first frame or an unguided run."""


@dataclass
class FrameEvent:
    index: int
    total: int
    source: np.ndarray
    output: np.ndarray
    weight: Optional[np.ndarray]
    seconds: float


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


@dataclass
class FramePlan:
    """Which source frames a run uses, at what size and frame rate."""

    start: int
    stop: Optional[int]
    step: int
    total: int
    size: tuple[int, int]
    fps: Fraction


def plan_frames(source: str | os.PathLike, settings: VideoSettings) -> FramePlan:
    from .video_io import probe

    info = probe(source)
    size = settings.output_size(info.width, info.height)
    available = max(0, info.frame_count - settings.start_frame)
    total = -(-available // settings.every_nth)
    if settings.max_frames:
        total = min(total, settings.max_frames)
    stop = settings.start_frame + total * settings.every_nth if settings.max_frames else None
    if settings.fps:
        fps = Fraction(settings.fps).limit_denominator(1001)
    else:
        fps = Fraction(info.fps or 24) / settings.every_nth
    return FramePlan(settings.start_frame, stop, settings.every_nth, total, size, fps)


def run_video(
    source: str | os.PathLike,
    output_path: Optional[str | os.PathLike],
    renderer: FrameRenderer,
    settings: VideoSettings,
    *,
    frames_dir: Optional[str | os.PathLike] = None,
    on_plan: Optional[Callable[[FramePlan], None]] = None,
    on_frame: Optional[Callable[[FrameEvent], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> VideoRunResult:
    """Render every planned frame of ``source`` and write an H.264 mp4 to ``output_path``.

    The mp4 appears at ``output_path`` only when every planned frame was written; an
    interrupted run leaves no file there (the writer's temporary file is removed). With
    ``frames_dir``, every finished frame is also saved there at once as a PNG
    (``frame_000001.png``, written atomically), so an interrupted run keeps its work.
    """
    from .atomic import save_png_atomic
    from .flow import FlowPrefetcher
    from .video_io import VideoWriter, iter_frames

    plan = plan_frames(source, settings)
    if plan.total == 0:
        raise ValueError(
            f"no frames to render: the video has none at start frame {settings.start_frame}; lower the start frame"
        )
    if on_plan is not None:
        on_plan(plan)
    frames = iter_frames(source, start=plan.start, stop=plan.stop, step=plan.step, size=plan.size)
    guided = settings.guidance.enabled
    if guided:
        # Both directions in two threads (FLOW.md §5.3): the prefetch of frame n+1 then costs about
        # one direction's time, well inside frame n's diffusion.
        stream = FlowPrefetcher(frames, method=settings.guidance.flow_method, weight_mode=settings.guidance.weight_mode,
                                parallel=True)
    else:
        stream = _Unguided(frames)

    writer = VideoWriter(output_path, fps=plan.fps, size=plan.size, crf=settings.crf) if output_path else None
    result = VideoRunResult(Path(output_path) if output_path else None, 0, plan.total, plan.fps, plan.size, False)
    previous: Optional[RenderedFrame] = None
    try:
        with stream:
            for index, frame, motion in stream:
                if index >= plan.total:
                    break
                if should_stop is not None and should_stop():
                    result.interrupted = True
                    break
                started = time.perf_counter()
                guide = None
                if guided and previous is not None and motion is not None:
                    guide = FrameGuideInput(previous.image, previous.latent, motion)
                rendered = renderer.render(frame, guide, index)
                _check_rendered(rendered, plan.size, index)
                if frames_dir is not None:
                    save_png_atomic(frame_path(frames_dir, index), rendered.image)
                if writer is not None:
                    writer.write(rendered.image)
                previous = rendered
                seconds = time.perf_counter() - started
                result.frames_written += 1
                result.frame_seconds.append(seconds)
                result.last_frame = rendered.image
                if on_frame is not None:
                    on_frame(FrameEvent(index, plan.total, frame, rendered.image,
                                        motion.weight if motion is not None else None, seconds))
        if should_stop is not None and result.frames_written < plan.total and should_stop():
            result.interrupted = True
        if writer is not None:
            if result.interrupted or result.frames_written == 0:
                writer.abort()
                result.output_path = None
            else:
                writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return result


def frame_path(frames_dir: str | os.PathLike, index: int) -> Path:
    """Where frame ``index`` (0-based) of a run is kept: frame_000001.png for the first."""
    return Path(frames_dir) / f"frame_{index + 1:06d}.png"


def _check_rendered(rendered: RenderedFrame, size: tuple[int, int], index: int) -> None:
    width, height = size
    if rendered.image.shape != (height, width, 3) or rendered.image.dtype != np.uint8:
        raise RuntimeError(
            f"frame {index} came back as {rendered.image.shape} {rendered.image.dtype}, expected ({height}, {width}, 3) "
            "uint8; the renderer changed the size (check the WebUI's width/height and resize mode)"
        )


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
