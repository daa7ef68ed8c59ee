"""What the pipelines' command lines share (``tune-a-video``, ``motion-inversion``, ``attention-flow``).

* :func:`one_line` — an error as one line for ``error: ...``.
* :class:`InterruptFlag` — Ctrl+C asks a training loop to checkpoint and stop.
* :func:`run_train_command` — a ``train`` sub-command: settings, progress, interrupt, JSON summary.
* :func:`run_video_command` — a command that writes videos: settings, progress, ``--frames-dir``, JSON summary.

Standard library only (torch and diffusers stay inside the pipelines' functions), so
``python -m lib_vidguide --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..cli import _given as given

__all__ = ["InterruptFlag", "given", "one_line", "run_train_command", "run_video_command", "write_frame_dirs"]


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


class InterruptFlag:
    """Ctrl+C asks the training loop to save a checkpoint and stop; a second Ctrl+C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        def handler(_signum, _frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("interrupt: saving a checkpoint after this step (Ctrl+C again to stop at once)", file=sys.stderr, flush=True)

        try:
            self._previous = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc_info):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def __call__(self) -> bool:
        return self.requested


def run_train_command(args: argparse.Namespace, settings_model, train: Callable[..., Any], **options: Any) -> int:
    """Run ``train(args.video, args.prompt, settings, ...)``: 0 when done, 2 with one ``error:`` line for bad input,
    130 when interrupted. ``options`` are passed on to ``train`` (e.g. ``tokenizer=args.tokenizer``)."""
    try:
        settings = settings_model.from_dict(given(args, settings_model))

        def progress(event) -> None:
            saved = f" (checkpoint {event.checkpoint.name})" if event.checkpoint else ""
            print(f"step {event.step}/{event.total_steps} loss {event.loss:.4f}{saved}", file=sys.stderr, flush=True)

        with InterruptFlag() as interrupted:
            result = train(
                args.video, args.prompt, settings, model=args.model, output_dir=args.out, models_dir=args.models_dir,
                device=args.device, resume=args.resume, progress=progress, should_interrupt=interrupted, **options,
            )
    except ValueError as error:  # includes pydantic's ValidationError and VideoInputError
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    summary = {
        "weights": str(result.weights_path) if result.weights_path else None, "steps": result.steps_done,
        "total_steps": result.total_steps, "interrupted": result.interrupted,
        "checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
        "first_loss": result.losses[0] if result.losses else None, "last_loss": result.losses[-1] if result.losses else None,
        "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }
    print(json.dumps(summary))
    if result.interrupted:
        print(f"interrupted: resume with --resume latest --out {args.out}", file=sys.stderr)
        return 130
    return 0


def write_frame_dirs(frames_dir: Optional[str], videos: List[Any]) -> List[str]:
    """Each video's frames as ``frame_00000.png, ...`` under ``frames_dir`` (``video-N/`` when several)."""
    frame_dirs: List[str] = []
    if frames_dir:
        from ..atomic import save_png_atomic

        for index, frames in enumerate(videos):
            folder = Path(frames_dir) / (f"video-{index + 1}" if len(videos) > 1 else "")
            for number, frame in enumerate(frames):
                save_png_atomic(folder / f"frame_{number:05d}.png", frame)
            frame_dirs.append(str(folder))
    return frame_dirs


def run_video_command(
    args: argparse.Namespace, settings_model, make: Callable[[Any, Callable[[int, int], None]], Any],
    extra: Optional[Callable[[Any], Dict[str, Any]]] = None,
) -> int:
    """Run ``make(settings, progress)`` (a result with ``videos``, ``output_paths``, ``fps``, ``notes``, ``seconds``):
    0 when done, 2 with one ``error:`` line for bad input. ``extra(result)`` adds fields to the JSON summary."""
    try:
        settings = settings_model.from_dict(given(args, settings_model))

        def progress(step: int, steps: int) -> None:
            print(f"step {step}/{steps}", file=sys.stderr, flush=True)

        result = make(settings, progress)
        frame_dirs = write_frame_dirs(args.frames_dir, result.videos)
    except ValueError as error:  # includes pydantic's ValidationError and VideoInputError
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    print(json.dumps({
        "outputs": [str(path) for path in result.output_paths], "frames": int(result.videos[0].shape[0]),
        "size": [int(result.videos[0].shape[2]), int(result.videos[0].shape[1])], "fps": result.fps,
        **(extra(result) if extra is not None else {}),
        "frames_dirs": frame_dirs, "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
    }))
    return 0
