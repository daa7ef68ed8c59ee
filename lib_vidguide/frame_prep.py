"""Bring video frames to a size Stable Diffusion can render: multiples of 8.

SD works on latents 8 times smaller than the image, so width and height must
be multiples of 8.  :func:`choose_output_size` decides the size and how to get
there, once per video, and says so in words (``plan.note``);
:func:`prepare_frame` applies that plan to each frame; :func:`restore_frame`
undoes the padding of ``mode="pad"`` on the rendered frame.

Modes (``SIZE_MODES``):

* ``"resize"``: scale the whole frame to the size.  Nothing is lost; the
  aspect ratio may change slightly (by under 8 px per side without a
  requested size).
* ``"crop"``: keep the aspect ratio and cut the excess evenly from both
  sides.  Without a requested size it is a pure crop, pixels untouched
  (513x767 -> 512x760); with one, the frame is first scaled to cover it.
* ``"pad"``: keep the whole picture and its aspect ratio and fill the rest
  by repeating the edge pixels (or black).  Without a requested size the
  frame is padded up to the next multiple of 8 (513x767 -> 520x768) and
  :func:`restore_frame` cuts the rendered frame back to 513x767; with one, the
  frame is scaled to fit inside it first (letterbox).

Without a requested size the source size is used, rounded down to multiples of
8 ("pad": up), as ``VideoSettings.output_size`` does.  A requested width or
height is rounded down to a multiple of 8; with only one of them the other
follows the source's aspect ratio.  No side is ever below ``minimum`` (8):
a 1x1 video becomes 8x8, with a note.

Pure numpy and PIL; frames are RGB ``uint8`` arrays ``(height, width, 3)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .video_io import VideoInputError

__all__ = [
    "SIZE_MODES",
    "SizePlan",
    "choose_output_size",
    "fit_to_multiple",
    "prepare_frame",
    "restore_frame",
]

MULTIPLE = 8  # SD's VAE downsamples by 8
SIZE_MODES: tuple[str, ...] = ("resize", "crop", "pad")

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive)


@dataclass(frozen=True)
class SizePlan:
    """How a ``source_size`` frame becomes a ``size`` frame (both ``(width, height)``).

    The frame is scaled to ``scaled_size`` (equal to ``source_size`` when it is
    not scaled), then cut to ``crop_box`` (crop mode) or padded by ``padding``
    (pad mode: left, top, right, bottom).  ``content_box`` is where the picture
    lies in the prepared frame, what :func:`restore_frame` keeps; ``output_size``
    is the size of a restored frame.  ``note`` is empty when the frame is used
    as it is, else one sentence for the user.
    """

    source_size: tuple[int, int]
    size: tuple[int, int]
    mode: str
    scaled_size: tuple[int, int]
    crop_box: Optional[Box]
    padding: Optional[Box]
    note: str

    @property
    def changed(self) -> bool:
        return self.size != self.source_size or self.scaled_size != self.source_size

    @property
    def content_box(self) -> Box:
        width, height = self.size
        if self.padding is None:
            return 0, 0, width, height
        left, top, right, bottom = self.padding
        return left, top, width - right, height - bottom

    @property
    def output_size(self) -> tuple[int, int]:
        left, top, right, bottom = self.content_box
        return right - left, bottom - top


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise VideoInputError(f"{name} must be a whole number of pixels >= 1, got {value!r}.")
    return int(value)


def _round_down(value: int, multiple: int, minimum: int) -> int:
    return max(minimum, value - value % multiple)


def _round_up(value: int, multiple: int, minimum: int) -> int:
    return max(minimum, value + (-value) % multiple)


def _centred(total: int, part: int) -> tuple[int, int]:
    """(before, after) split of ``total - part``; the odd pixel goes after."""
    before = (total - part) // 2
    return before, total - part - before


def choose_output_size(
    source_width: int,
    source_height: int,
    width: Optional[int] = None,
    height: Optional[int] = None,
    mode: str = "resize",
    *,
    multiple: int = MULTIPLE,
    minimum: int = MULTIPLE,
) -> SizePlan:
    """Plan the size SD renders a ``source_width`` x ``source_height`` video at (see the module doc).

    ``width``/``height``: the requested size (either, both or neither; 0 and
    None mean "not requested").  Returns a :class:`SizePlan`; its ``note``
    says what happens, e.g. "513x767 cropped to 512x760 (centred; 1 px of the
    width and 7 px of the height cut off)".
    """
    if mode not in SIZE_MODES:
        raise VideoInputError(f"Unknown size mode {mode!r}; choose one of {', '.join(SIZE_MODES)}.")
    multiple = _positive_int(multiple, "multiple")
    minimum = _round_up(_positive_int(minimum, "minimum"), multiple, multiple)
    source = (_positive_int(source_width, "source width"), _positive_int(source_height, "source height"))
    requested_w = None if not width else _positive_int(width, "width")
    requested_h = None if not height else _positive_int(height, "height")
    notes: list[str] = []

    if requested_w is None and requested_h is None:
        rounding = _round_up if mode == "pad" else _round_down
        target = (rounding(source[0], multiple, minimum), rounding(source[1], multiple, minimum))
        requested = False
    else:
        if requested_w is None:  # follow the source's aspect ratio, to the nearest multiple
            requested_w = round(requested_h * source[0] / source[1] / multiple) * multiple
        if requested_h is None:
            requested_h = round(requested_w * source[1] / source[0] / multiple) * multiple
        target = (_round_down(requested_w, multiple, minimum), _round_down(requested_h, multiple, minimum))
        if (width and target[0] != width) or (height and target[1] != height):
            notes.append(
                f"the requested {width or '?'}x{height or '?'} was rounded to {target[0]}x{target[1]} "
                f"(multiples of {multiple}, at least {minimum})"
            )
        requested = True

    if source[0] < minimum or source[1] < minimum:
        notes.append(f"the {source[0]}x{source[1]} video is smaller than the {minimum}x{minimum} minimum")
    crop_box = padding = None
    fits_inside = target[0] <= source[0] and target[1] <= source[1]
    fits_around = target[0] >= source[0] and target[1] >= source[1]

    if mode == "resize":
        scaled = target
        action = "resized to"
        ratio = (target[0] / target[1]) / (source[0] / source[1])
        if abs(ratio - 1) > 0.005:
            action += f" (aspect ratio changed by {abs(ratio - 1) * 100:.1f} %)"
    elif mode == "crop":
        if not requested and fits_inside:
            scaled = source  # a pure crop: the pixels are used as they are
        else:
            scale = max(target[0] / source[0], target[1] / source[1])
            scaled = (max(target[0], round(source[0] * scale)), max(target[1], round(source[1] * scale)))
        left, right = _centred(scaled[0], target[0])
        top, bottom = _centred(scaled[1], target[1])
        crop_box = (left, top, left + target[0], top + target[1])
        removed = ((left + right, "width"), (top + bottom, "height"))
        cut = [f"{count} px of the {side}" for count, side in removed if count]
        if not cut:
            action = "scaled to"
        else:
            action = (f"scaled to {scaled[0]}x{scaled[1]} and " if scaled != source else "") + "cropped to"
            action += f" (centred; {' and '.join(cut)} cut off)"
    else:  # pad
        if not requested and fits_around:
            scaled = source
        else:
            scale = min(target[0] / source[0], target[1] / source[1])
            scaled = (
                min(target[0], max(1, round(source[0] * scale))),
                min(target[1], max(1, round(source[1] * scale))),
            )
        left, right = _centred(target[0], scaled[0])
        top, bottom = _centred(target[1], scaled[1])
        padding = (left, top, right, bottom)
        if not any(padding):
            action = "scaled to"
        else:
            action = (f"scaled to {scaled[0]}x{scaled[1]} and " if scaled != source else "") + "padded to"
            action += f" (for rendering only: the output is cut back to {scaled[0]}x{scaled[1]})"

    plan_note = ""
    if target != source or scaled != source:
        plan_note = _sentence(source, target, action)
    if notes:
        plan_note = "; ".join(filter(None, [plan_note] + notes))
    return SizePlan(source, target, mode, scaled, crop_box, padding, plan_note)


def _sentence(source: tuple[int, int], target: tuple[int, int], action: str) -> str:
    """'513x767 cropped to 512x760 (...)': the target size goes after the action, before any remark."""
    head, sep, tail = action.partition(" (")
    return f"{source[0]}x{source[1]} {head} {target[0]}x{target[1]}" + (f" ({tail}" if sep else "")


def _resize(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if (frame.shape[1], frame.shape[0]) == size:
        return frame
    from PIL import Image

    # Lanczos, as video_io uses: sharp when shrinking, no ringing worth noticing on video.
    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize(size, Image.Resampling.LANCZOS))


def prepare_frame(frame: np.ndarray, plan: SizePlan, *, pad_mode: str = "edge") -> np.ndarray:
    """Apply ``plan`` to one RGB uint8 frame of ``plan.source_size``; returns a ``plan.size`` frame.

    ``pad_mode``: "edge" repeats the border pixels (SD then continues the
    picture instead of drawing a frame line), "black" fills with black.
    """
    if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise VideoInputError(
            f"Expected an RGB uint8 frame (height, width, 3), got "
            f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}."
        )
    if (frame.shape[1], frame.shape[0]) != plan.source_size:
        raise VideoInputError(
            f"The frame is {frame.shape[1]}x{frame.shape[0]} but the size plan is for "
            f"{plan.source_size[0]}x{plan.source_size[1]}; plan again for this video."
        )
    if pad_mode not in ("edge", "black"):
        raise VideoInputError(f"Unknown pad mode {pad_mode!r}; choose 'edge' or 'black'.")
    out = _resize(frame, plan.scaled_size)
    if plan.crop_box is not None:
        left, top, right, bottom = plan.crop_box
        out = out[top:bottom, left:right]
    if plan.padding is not None and any(plan.padding):
        left, top, right, bottom = plan.padding
        widths = ((top, bottom), (left, right), (0, 0))
        out = np.pad(out, widths, mode="edge") if pad_mode == "edge" else np.pad(out, widths)
    return np.ascontiguousarray(out)


def restore_frame(frame: np.ndarray, plan: SizePlan) -> np.ndarray:
    """Cut a rendered ``plan.size`` frame back to the picture (``plan.output_size``): undoes "pad".

    For "resize" and "crop" the frame is returned unchanged.
    """
    if (frame.shape[1], frame.shape[0]) != plan.size:
        raise VideoInputError(
            f"The rendered frame is {frame.shape[1]}x{frame.shape[0]}, "
            f"expected {plan.size[0]}x{plan.size[1]}."
        )
    left, top, right, bottom = plan.content_box
    return np.ascontiguousarray(frame[top:bottom, left:right])


def fit_to_multiple(
    frame: np.ndarray,
    width: Optional[int] = None,
    height: Optional[int] = None,
    mode: str = "resize",
    *,
    pad_mode: str = "edge",
) -> np.ndarray:
    """One frame to a multiple-of-8 size: :func:`choose_output_size` + :func:`prepare_frame`.

    For a video, plan once with :func:`choose_output_size` and call
    :func:`prepare_frame` per frame (and show ``plan.note`` to the user).
    """
    shape = getattr(frame, "shape", ())
    if len(shape) != 3:
        raise VideoInputError(f"Expected an RGB uint8 frame (height, width, 3), got shape {shape}.")
    plan = choose_output_size(shape[1], shape[0], width, height, mode)
    return prepare_frame(frame, plan, pad_mode=pad_mode)
