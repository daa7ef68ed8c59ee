"""Guidance schedules over denoising progress, declared as data.

A schedule maps progress (0 = the first denoiser call of an img2img run,
1 = fully denoised) to a guidance weight. Schedules are piecewise-linear tables
of ``(progress, weight)`` points; a repeated progress value makes a step.
They are parsed from preset names or from text such as
``"0:0.6, 0.8:0.6, 0.8:0.4, 1:0.4"`` and are never evaluated as code, so a
schedule that arrives over the HTTP API cannot run anything.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

from .errors import UserInputError

# The seed's showcase (seeds/001): 0.6 for the first 80 % of the img2img steps,
# 0.4 afterwards. Its 0.1 for fast-moving pixels is the weight map's job
# (flow.weight_map mode "motion"), not the schedule's.
PRESETS: dict[str, tuple[tuple[float, float], ...]] = {
    "seed_showcase": ((0.0, 0.6), (0.8, 0.6), (0.8, 0.4), (1.0, 0.4)),
    "constant": ((0.0, 1.0), (1.0, 1.0)),
    "linear_decay": ((0.0, 1.0), (1.0, 0.0)),
    "strong_early": ((0.0, 1.0), (0.5, 0.8), (1.0, 0.2)),
    "late_only": ((0.0, 0.0), (0.5, 0.0), (0.5, 0.6), (1.0, 0.6)),
}

DEFAULT_SCHEDULE = "seed_showcase"


class ScheduleError(UserInputError):
    """A schedule text that is neither a preset nor a valid table."""


@dataclass(frozen=True)
class Schedule:
    """A piecewise-linear weight over progress in [0, 1]."""

    points: tuple[tuple[float, float], ...]
    source: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if len(self.points) < 1:
            raise ScheduleError("a schedule needs at least one 'progress:weight' point")
        previous = -1.0
        for progress, weight in self.points:
            if not (0.0 <= progress <= 1.0):
                raise ScheduleError(f"schedule progress {progress} is outside [0, 1]; use values like 0, 0.5, 1")
            if not (0.0 <= weight <= 1.0):
                raise ScheduleError(f"schedule weight {weight} is outside [0, 1]; weights blend x0 with the guide")
            if progress < previous:
                raise ScheduleError(
                    f"schedule progress values must not decrease (got {previous} then {progress}); "
                    "sort the points, repeating a value to make a step"
                )
            previous = progress

    def __call__(self, progress: float) -> float:
        """Weight at ``progress``; right-continuous at steps, constant beyond the ends."""
        xs = [p for p, _ in self.points]
        progress = min(max(float(progress), 0.0), 1.0)
        right = bisect.bisect_right(xs, progress)
        if right == 0:
            return self.points[0][1]
        if right == len(xs):
            return self.points[-1][1]
        (x0, y0), (x1, y1) = self.points[right - 1], self.points[right]
        if x1 == x0:
            return y1
        return y0 + (y1 - y0) * (progress - x0) / (x1 - x0)

    def to_text(self) -> str:
        """The canonical text form: a preset name when it is one, else the table."""
        if self.source in PRESETS:
            return self.source
        return ", ".join(f"{_fmt(p)}:{_fmt(w)}" for p, w in self.points)

    @property
    def is_zero(self) -> bool:
        return all(w == 0.0 for _, w in self.points)


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def parse_schedule(text: str | Schedule | Sequence[Sequence[float]]) -> Schedule:
    """Build a :class:`Schedule` from a preset name, a table text or a list of pairs."""
    if isinstance(text, Schedule):
        return text
    if not isinstance(text, str):
        try:
            points = tuple((float(p), float(w)) for p, w in text)
        except (TypeError, ValueError) as error:
            raise ScheduleError(f"schedule {text!r} must be pairs of numbers (progress, weight)") from error
        return Schedule(points)
    name = text.strip()
    if name.lower() in PRESETS:
        return Schedule(PRESETS[name.lower()], source=name.lower())
    if not name:
        raise ScheduleError(f"empty schedule; use a preset ({', '.join(PRESETS)}) or 'progress:weight, ...'")
    points = []
    for chunk in name.replace(";", ",").split(","):
        chunk = chunk.strip()
        if not chunk:
            continue
        if ":" not in chunk:
            if len(points) == 0 and _is_number(chunk) and "," not in name:
                value = float(chunk)
                points = [(0.0, value), (1.0, value)]
                break
            raise ScheduleError(
                f"schedule entry {chunk!r} is not 'progress:weight'; presets are {', '.join(PRESETS)}, "
                "or write e.g. '0:0.6, 0.8:0.6, 0.8:0.4, 1:0.4'"
            )
        progress_text, weight_text = chunk.split(":", 1)
        if not (_is_number(progress_text) and _is_number(weight_text)):
            raise ScheduleError(
                f"schedule entry {chunk!r} must be two numbers like '0.8:0.4'; write a table "
                f"'progress:weight, ...' or use a preset ({', '.join(PRESETS)})"
            )
        points.append((float(progress_text), float(weight_text)))
    return Schedule(tuple(points), source=name)


def _is_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value == value and value not in (float("inf"), float("-inf"))
