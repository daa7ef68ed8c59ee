"""Frame preparation for SD: sizes become multiples of 8 by resizing, cropping or padding."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lib_vidguide.frame_prep import (
    SIZE_MODES,
    choose_output_size,
    fit_to_multiple,
    prepare_frame,
    restore_frame,
)
from lib_vidguide.video_io import VideoInputError


def coordinate_frame(width: int, height: int) -> np.ndarray:
    """Each pixel tells where it came from: red = x, green = y (mod 256), blue = 99."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x % 256, y % 256, np.full_like(x, 99)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("mode", SIZE_MODES)
@pytest.mark.parametrize(
    "source", [(513, 767), (512, 768), (1, 1), (3, 5), (7, 1000), (1000, 9), (8, 8), (9, 9), (1919, 1081)]
)
def test_every_mode_gives_multiples_of_8_for_any_size(source: tuple[int, int], mode: str) -> None:
    plan = choose_output_size(*source, mode=mode)
    width, height = plan.size
    assert width % 8 == 0 and height % 8 == 0 and width >= 8 and height >= 8
    frame = coordinate_frame(*source)
    prepared = prepare_frame(frame, plan)
    assert prepared.shape == (height, width, 3) and prepared.dtype == np.uint8
    restored = restore_frame(prepared, plan)
    assert (restored.shape[1], restored.shape[0]) == plan.output_size
    if source[0] % 8 == 0 and source[1] % 8 == 0:
        assert plan.size == source and plan.note == "" and not plan.changed
        assert np.array_equal(prepared, frame)
    else:
        assert plan.note.startswith(f"{source[0]}x{source[1]} ")


def test_513x767_in_each_mode() -> None:
    frame = coordinate_frame(513, 767)

    resize = choose_output_size(513, 767, mode="resize")
    assert resize.size == (512, 760)
    assert resize.note == "513x767 resized to 512x760 (aspect ratio changed by 0.7 %)"

    crop = choose_output_size(513, 767, mode="crop")
    assert crop.size == (512, 760) and crop.scaled_size == (513, 767) and crop.crop_box == (0, 3, 512, 763)
    assert crop.note == (
        "513x767 cropped to 512x760 (centred; 1 px of the width and 7 px of the height cut off)"
    )
    # A pure crop: the pixels are the source's, unchanged.
    assert np.array_equal(prepare_frame(frame, crop), frame[3:763, 0:512])

    pad = choose_output_size(513, 767, mode="pad")
    assert pad.size == (520, 768) and pad.padding == (3, 0, 4, 1) and pad.output_size == (513, 767)
    assert "padded to 520x768" in pad.note and "cut back to 513x767" in pad.note
    padded = prepare_frame(frame, pad)
    assert np.array_equal(padded[:767, 3:516], frame)
    assert np.array_equal(padded[:, :3], np.repeat(padded[:, 3:4], 3, axis=1))  # edges repeated
    assert np.array_equal(restore_frame(padded, pad), frame)
    black = prepare_frame(frame, pad, pad_mode="black")
    assert black[:, :3].max() == 0 and black[767:].max() == 0


def test_tiny_videos_become_8x8_with_a_note() -> None:
    one = np.full((1, 1, 3), (10, 200, 30), np.uint8)
    for mode in SIZE_MODES:
        plan = choose_output_size(1, 1, mode=mode)
        assert plan.size == (8, 8)
        assert "smaller than the 8x8 minimum" in plan.note
        prepared = prepare_frame(one, plan)
        assert prepared.shape == (8, 8, 3)
        assert np.abs(prepared.astype(int) - one.astype(int)).max() <= 1  # a flat colour stays flat
    pad = choose_output_size(1, 1, mode="pad")
    assert np.array_equal(restore_frame(prepare_frame(one, pad), pad), one)


def test_requested_sizes() -> None:
    # Both given: rounded down to multiples of 8, with a note.
    plan = choose_output_size(1920, 1080, 513, 515, mode="resize")
    assert plan.size == (512, 512) and "requested 513x515 was rounded to 512x512" in plan.note
    # One given: the other follows the aspect ratio.
    assert choose_output_size(1920, 1080, width=512).size == (512, 288)
    assert choose_output_size(1920, 1080, height=288).size == (512, 288)
    assert choose_output_size(1920, 1080, width=0, height=None).size == (1920, 1080)
    # Crop covers the requested box and cuts the sides evenly.
    crop = choose_output_size(1920, 1080, 512, 512, mode="crop")
    assert crop.scaled_size == (910, 512) and crop.crop_box == (199, 0, 711, 512)
    assert "398 px of the width cut off" in crop.note
    # Pad fits inside and letterboxes; the output is the picture.
    pad = choose_output_size(1920, 1080, 512, 512, mode="pad")
    assert pad.scaled_size == (512, 288) and pad.padding == (0, 112, 0, 112) and pad.output_size == (512, 288)
    # Upscaling works the same way.
    assert choose_output_size(64, 48, 512, 512, mode="crop").scaled_size == (683, 512)


def test_crop_keeps_the_centre_of_a_scaled_frame() -> None:
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 50:150] = 255  # a white band in the middle half
    out = fit_to_multiple(frame, 64, 64, mode="crop")
    assert out.shape == (64, 64, 3) and out.mean() > 250  # only the band is left


def test_fit_to_multiple_is_the_one_frame_shortcut() -> None:
    frame = coordinate_frame(513, 767)
    assert fit_to_multiple(frame).shape == (760, 512, 3)
    assert fit_to_multiple(frame, mode="pad").shape == (768, 520, 3)
    assert np.array_equal(fit_to_multiple(frame, mode="crop"), frame[3:763, :512])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: choose_output_size(513, 767, mode="stretch"), "resize, crop, pad"),
        (lambda: choose_output_size(0, 767), "source width"),
        (lambda: choose_output_size(513, -1), "source height"),
        (lambda: choose_output_size(513, 767, width=-8), "width"),
        (lambda: choose_output_size(513, 767, height=2.5), "height"),
        (lambda: prepare_frame(np.zeros((767, 513, 3), np.float32), choose_output_size(513, 767)), "uint8"),
        (lambda: prepare_frame(np.zeros((10, 10, 3), np.uint8), choose_output_size(513, 767)), "plan again"),
        (
            lambda: prepare_frame(coordinate_frame(9, 9), choose_output_size(9, 9), pad_mode="mirror"),
            "pad mode",
        ),
        (
            lambda: restore_frame(np.zeros((8, 8, 3), np.uint8), choose_output_size(513, 767)),
            "expected 512x760",
        ),
        (lambda: fit_to_multiple(np.zeros((8, 8), np.uint8)), "RGB"),
    ],
)
def test_bad_arguments_get_clear_errors(call, match: str) -> None:
    with pytest.raises(VideoInputError, match=match):
        call()


def test_importing_frame_prep_does_not_import_av() -> None:
    code = "import sys, lib_vidguide.frame_prep; assert 'av' not in sys.modules, 'av imported eagerly'"
    subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], check=True)
