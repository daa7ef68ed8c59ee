"""Small real video files for tests, written with PyAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib_vidguide.video_io import write_video


def moving_pattern(n_frames: int = 6, size=(64, 64), shift_px: float = 2.0) -> list[np.ndarray]:
    """A smooth texture panning right by ``shift_px`` per frame (known, simple motion)."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(n_frames):
        x = xx - shift_px * t
        frame = np.stack([
            128 + 90 * np.sin(x / 6.0) * np.cos(yy / 9.0),
            128 + 90 * np.cos(x / 8.0 + 1.0),
            128 + 90 * np.sin((x + yy) / 11.0),
        ], axis=-1)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def write_clip(path: Path, frames, fps: float = 8.0) -> Path:
    write_video(path, frames, fps=fps, crf=4)
    return path
