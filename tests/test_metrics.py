"""The warp-error protocol on synthetic clips with known motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lib_vidguide.flow import backward_warp
from lib_vidguide.metrics import SourceFlows, source_flows, warp_error
from lib_vidguide.synthetic import make_clip

N_FRAMES = 10
SIZE = (192, 256)



@pytest.fixture(scope="module")
def clip():
    return make_clip(N_FRAMES, SIZE, seed=0)


@pytest.fixture(scope="module")
def source(clip):
    return clip.frames


@pytest.fixture(scope="module")
def flows(source):
    return source_flows(source)


@pytest.fixture(scope="module")
def restyled():
    """The same motion rendered from other photos, without noise: a perfectly consistent edit."""
    return make_clip(N_FRAMES, SIZE, seed=1, background="rocket", foreground="chelsea", noise_sigma=0.0).frames


def test_unchanged_source_scores_at_the_noise_floor(clip, source, flows):
    report = warp_error(source, source, flows=flows)
    # The floor: exact flows and occlusions. What remains is the σ=1.5 noise, resampling, and
    # the anti-aliased edge of the moving cut-out.
    exact = SourceFlows(
        size=SIZE,
        method="ground truth",
        to_next=clip.flows_forward,
        visible=[~occluded for occluded in clip.occlusions_forward],
    )
    floor = warp_error(source, source, flows=exact)
    print(f"\nwarp error of the source itself: {report.per_mille:.3f} ×1e-3 with DIS medium, "
          f"{floor.per_mille:.3f} with the exact flow (visible {100 * np.mean(report.visible_fraction):.1f} % "
          "of pixels)")
    assert len(report.per_pair) == N_FRAMES - 1
    assert report.per_mille == pytest.approx(report.mean * 1e3)
    assert report.size == SIZE and report.method == "dis_medium"
    assert report.per_mille < 2.0 * floor.per_mille
    assert report.per_mille < 1.5
    assert min(report.visible_fraction) > 0.9


def test_flicker_scores_clearly_higher(source, flows):
    rng = np.random.default_rng(7)
    # Per-frame brightness offsets in [0, 1] units, random in size, alternating in sign so that
    # every frame-to-frame step is a visible flicker (≥ 0.06).
    offsets = rng.uniform(0.03, 0.06, size=N_FRAMES) * np.where(np.arange(N_FRAMES) % 2 == 0, 1.0, -1.0)
    flickering = [np.clip(frame / 255.0 + offset, 0.0, 1.0).astype(np.float32) for frame, offset in zip(source, offsets)]
    steady = warp_error(source, source, flows=flows)
    flicker = warp_error(source, flickering, flows=flows)
    print(f"\nwarp error: unchanged {steady.per_mille:.3f}, flickering {flicker.per_mille:.3f} ×1e-3")
    assert flicker.per_mille > 5 * steady.per_mille


def test_consistent_edit_beats_an_inconsistent_one(source, flows, restyled):
    rng = np.random.default_rng(3)
    # Each frame nudged by its own sub-pixel shift: the texture "swims" against the source motion.
    swimming = []
    for frame in restyled:
        shift = np.empty((*SIZE, 2), np.float32)
        shift[...] = rng.uniform(-1.5, 1.5, size=2)
        swimming.append(backward_warp(frame, shift))
    consistent = warp_error(source, restyled, flows=flows)
    inconsistent = warp_error(source, swimming, flows=flows)
    print(f"\nwarp error: consistent restyle {consistent.per_mille:.3f}, swimming restyle {inconsistent.per_mille:.3f} ×1e-3")
    assert consistent.per_mille < 0.5 * inconsistent.per_mille


def test_output_size_may_differ_from_source(source, flows):
    full = warp_error(source, source, flows=flows)
    for height, width in ((96, 128), (288, 384)):
        resized = [cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA) for frame in source]
        report = warp_error(source, resized)
        print(f"\nwarp error of the source resized to {height}x{width}: {report.per_mille:.3f} ×1e-3")
        assert report.size == (height, width)
        assert report.per_mille < 3 * full.per_mille + 0.5


def test_uint8_float_and_grey_outputs_agree(source, flows):
    as_uint8 = warp_error(source, source, flows=flows)
    as_float = warp_error(source, [frame.astype(np.float32) / 255.0 for frame in source], flows=flows)
    assert as_float.per_mille == pytest.approx(as_uint8.per_mille, rel=1e-5)
    grey = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in source]
    as_grey = warp_error(source, grey, flows=flows)
    assert 0.2 * as_uint8.per_mille < as_grey.per_mille < 1.5 * as_uint8.per_mille


def test_reusing_flows_gives_the_same_numbers(source, flows):
    subset = source[:4]
    fresh = warp_error(subset, subset)
    reused = warp_error(subset, subset, flows=source_flows(subset))
    assert fresh.per_pair == reused.per_pair


def test_rejects_bad_input(source, flows):
    with pytest.raises(ValueError, match="source has 10 frames but output has 9"):
        warp_error(source, source[:-1])
    with pytest.raises(ValueError, match="at least 2"):
        warp_error(source[:1], source[:1])
    with pytest.raises(ValueError, match="output frame 1 has shape"):
        warp_error(source[:2], [source[0], source[1][:-8]])
    with pytest.raises(ValueError, match=r"divide 0-255 images by 255"):
        warp_error(source[:2], [frame.astype(np.float32) for frame in source[:2]])
    with pytest.raises(ValueError, match="source frame 0 must be RGB uint8"):
        warp_error([frame.astype(np.float32) for frame in source[:2]], source[:2])
    with pytest.raises(ValueError, match="source_flows"):
        warp_error(source[:3], source[:3], flows=flows)
    with pytest.raises(ValueError, match="flow method 'raft'"):
        warp_error(source[:2], source[:2], method="raft")


def test_pair_warp_error_is_the_same_term_as_warp_error():
    from lib_vidguide.flow import bidirectional_flow
    from lib_vidguide.metrics import pair_warp_error, warp_error

    clip = make_clip(4, (96, 128), seed=1)
    outputs = [np.clip(frame.astype(int) + 10 * (i % 2), 0, 255).astype(np.uint8) for i, frame in enumerate(clip.frames)]
    report = warp_error(clip.frames, outputs)
    pairs = [pair_warp_error(outputs[t], outputs[t + 1], bidirectional_flow(clip.frames[t], clip.frames[t + 1]))
             for t in range(3)]
    assert [error for error, _ in pairs] == pytest.approx(report.per_pair, rel=1e-6)
    assert [fraction for _, fraction in pairs] == pytest.approx(report.visible_fraction)
