"""The synthetic scenes: their ground truth must describe their frames exactly."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lib_vidguide import synthetic
from lib_vidguide.flow import backward_warp, compute_flow, fb_occlusion, rgb_to_gray
from lib_vidguide.synthetic import SCENES, make_clip, make_pair

SIZE = (512, 768)
NOISE_FLOOR_GREY = 3.0  # mean |difference| of two σ=1.5 renderings after resampling, with margin



@pytest.fixture(scope="module")
def pairs():
    return {scene: make_pair(scene, SIZE, seed=0) for scene in SCENES}


def _mean_abs(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2)[where].mean())


@pytest.mark.parametrize("scene", SCENES)
def test_ground_truth_warp_reproduces_the_other_frame(pairs, scene):
    pair = pairs[scene]
    assert pair.frame1.dtype == np.uint8 and pair.frame1.shape == (*SIZE, 3)
    assert pair.flow_forward.dtype == np.float32 and pair.flow_forward.shape == (*SIZE, 2)
    # Frame 2 carried onto frame 1's grid needs the flow that lives on frame 1's grid (1 -> 2):
    # frame1(x) ≈ frame2(x + flow_forward(x)); and the other way round with flow_backward.
    visible1 = ~pair.occlusion1 & pair.valid1
    visible2 = ~pair.occlusion2 & pair.valid2
    onto_frame1 = _mean_abs(backward_warp(pair.frame2, pair.flow_forward), pair.frame1, visible1)
    onto_frame2 = _mean_abs(backward_warp(pair.frame1, pair.flow_backward), pair.frame2, visible2)
    without_motion = _mean_abs(pair.frame1, pair.frame2, visible2)
    print(
        f"\n[{scene}] ground-truth warp error (grey levels): frame 2 -> 1 {onto_frame1:.2f}, "
        f"frame 1 -> 2 {onto_frame2:.2f}; zero flow {without_motion:.2f}"
    )
    assert onto_frame1 < NOISE_FLOOR_GREY
    assert onto_frame2 < NOISE_FLOOR_GREY
    assert without_motion > 3 * max(onto_frame1, onto_frame2)


def test_ground_truth_sign_matches_compute_flow(pairs):
    pair = pairs["translation"]
    estimate = compute_flow(rgb_to_gray(pair.frame1), rgb_to_gray(pair.frame2))
    visible = ~pair.occlusion1
    np.testing.assert_allclose(np.median(estimate[visible], axis=0), (3.6, -2.2), atol=0.1)
    np.testing.assert_allclose(pair.flow_forward[visible].mean(axis=0, dtype=np.float64), (3.6, -2.2), atol=1e-5)
    np.testing.assert_allclose(pair.flow_backward[~pair.occlusion2].mean(axis=0, dtype=np.float64), (-3.6, 2.2), atol=1e-5)


def test_translation_occlusion_is_the_strip_leaving_the_canvas(pairs):
    pair = pairs["translation"]
    height, width = SIZE
    xs, ys = np.meshgrid(np.arange(width), np.arange(height))
    leaving = (xs + 3.6 > width - 1) | (ys - 2.2 < 0)
    np.testing.assert_array_equal(pair.occlusion1, leaving)
    entering = (xs - 3.6 < 0) | (ys + 2.2 > height - 1)
    np.testing.assert_array_equal(pair.occlusion2, entering)
    assert pair.valid1.all() and pair.valid2.all()


@pytest.mark.parametrize("scene", SCENES)
def test_ground_truth_flows_are_mutually_consistent(pairs, scene):
    pair = pairs[scene]
    # Exact flows pass a tight forward-backward test wherever the point stays visible.
    inconsistent = fb_occlusion(pair.flow_forward, pair.flow_backward, alpha=0.0, beta=0.01)
    agree = ~pair.occlusion1 & pair.valid1
    disagreement = float((inconsistent & agree).sum() / agree.sum())
    recall = float((inconsistent & pair.occlusion1).sum() / max(pair.occlusion1.sum(), 1))
    print(f"\n[{scene}] exact flows: {100 * disagreement:.3f} % of visible pixels fail a 0.1 px FB test; "
          f"occlusion recall {recall:.3f}")
    assert disagreement < 0.005
    assert recall > 0.95


def test_moving_object_layers(pairs):
    pair = pairs["moving_object"]
    # The edge of the cut-out is the only place without a single flow: a thin line.
    assert 0.0 < (~pair.valid1).mean() < 0.02
    # Background and object move differently: both flows are present.
    flows = pair.flow_forward[pair.valid1].reshape(-1, 2)
    background = np.isclose(flows, (2.0, 1.0), atol=1e-3).all(axis=1)
    assert 0.5 < background.mean() < 0.95
    assert np.abs(flows[~background]).max() > 15


def test_seed_changes_only_the_noise():
    first = make_pair("moving_object", (96, 128), seed=1)
    again = make_pair("moving_object", (96, 128), seed=1)
    other = make_pair("moving_object", (96, 128), seed=2)
    np.testing.assert_array_equal(first.frame1, again.frame1)
    assert not np.array_equal(first.frame1, other.frame1)
    assert np.abs(first.frame1.astype(int) - other.frame1.astype(int)).mean() < 3
    np.testing.assert_array_equal(first.flow_forward, other.flow_forward)


def test_make_pair_validation():
    with pytest.raises(ValueError, match="scene 'zoom'"):
        make_pair("zoom")
    with pytest.raises(ValueError, match="too small"):
        make_pair("translation", (16, 16))
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        make_pair("translation", (512,))


def test_make_clip_is_quick_and_exact():
    start = time.perf_counter()
    clip = make_clip(16, (256, 256), seed=0)
    per_frame_s = (time.perf_counter() - start) / 16
    print(f"\nmake_clip: {1000 * per_frame_s:.1f} ms per 256x256 frame with ground truth")
    assert per_frame_s < 0.2
    assert len(clip.frames) == 16
    assert len(clip.flows_forward) == len(clip.flows_backward) == len(clip.occlusions_forward) == 15
    assert clip.frames[0].shape == (256, 256, 3) and clip.frames[0].dtype == np.uint8
    worst = 0.0
    for t in range(15):
        visible = ~clip.occlusions_forward[t]
        error = _mean_abs(backward_warp(clip.frames[t + 1], clip.flows_forward[t]), clip.frames[t], visible)
        worst = max(worst, error)
        visible_next = ~clip.occlusions_backward[t]
        error = _mean_abs(backward_warp(clip.frames[t], clip.flows_backward[t]), clip.frames[t + 1], visible_next)
        worst = max(worst, error)
    print(f"make_clip: worst ground-truth warp error over the clip {worst:.2f} grey levels")
    # Edge-blend pixels of the cut-out are included here (clips carry no validity mask).
    assert worst < 4.0
    moving = np.linalg.norm(clip.flows_forward[5], axis=2)
    assert 0.5 < moving.max() < 8


def test_make_clip_motion_is_independent_of_photos_and_noise():
    plain = make_clip(4, (64, 96), seed=0)
    restyled = make_clip(4, (64, 96), seed=5, background="rocket", foreground="chelsea", noise_sigma=0.0)
    for t in range(3):
        np.testing.assert_array_equal(plain.flows_forward[t], restyled.flows_forward[t])
        np.testing.assert_array_equal(plain.occlusions_forward[t], restyled.occlusions_forward[t])
    assert not np.array_equal(plain.frames[0], restyled.frames[0])


def test_make_clip_validation():
    with pytest.raises(ValueError, match="n_frames"):
        make_clip(1)
    with pytest.raises(ValueError, match="photo 'lily'"):
        make_clip(3, background="lily")
    with pytest.raises(ValueError, match="noise_sigma"):
        make_clip(3, noise_sigma=-1.0)


def test_only_bundled_photos_are_used():
    for name in synthetic.PHOTOS:
        photo = synthetic._photo(name)
        assert photo.ndim == 3 and photo.shape[2] == 3
