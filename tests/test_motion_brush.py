"""SVD motion brush: the scheduler maths, the masks, the runner on a tiny SVD, the files and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lib_vidguide.motion_brush import (
    MotionBrushEulerScheduler,
    composite_static,
    feathered_static_mask,
    mask_is_painted,
    mask_to_array,
)
from lib_vidguide.svd_motion_brush import (
    MotionBrushInterrupted,
    MotionBrushRunner,
    MotionBrushSettings,
    build_tiny_svd_components,
    check_inputs,
    register_cli,
    save_tiny_svd,
    settings_from_namespace,
    write_animation,
)

REPO = Path(__file__).resolve().parents[1]

SVD_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", interpolation_type="linear",
    num_train_timesteps=1000, prediction_type="v_prediction", sigma_max=700.0, sigma_min=0.002, steps_offset=1,
    timestep_spacing="leading", timestep_type="continuous", use_karras_sigmas=True,
)
SD_EPSILON_SCHEDULER = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
)


def half_mask(height: int = 64, width: int = 64) -> np.ndarray:
    """The right half may move."""
    mask = np.zeros((height, width), np.float32)
    mask[:, width // 2:] = 1.0
    return mask


def disc_mask(size: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return (((yy - size * 0.4) ** 2 + (xx - size * 0.6) ** 2) < (size * 0.3) ** 2).float()


def still_image(size: int = 64, seed: int = 0) -> Image.Image:
    gradient = np.linspace(0, 255, size, dtype=np.float32)
    rng = np.random.default_rng(seed)
    rgb = np.stack([gradient[None, :].repeat(size, 0), gradient[:, None].repeat(size, 1), rng.uniform(0, 255, (size, size))], -1)
    return Image.fromarray(rgb.astype(np.uint8))


# --------------------------------------------------------------------------- reference: a literal copy of step()


def reference_step(scheduler, model_output, timestep, sample, static, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"),
                   s_noise=1.0, generator=None):
    """diffusers 0.31 ``EulerDiscreteScheduler.step`` copied, with the seed's x0 replacement inside (test only)."""
    from diffusers.utils.torch_utils import randn_tensor

    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)
    sample = sample.to(torch.float32)
    sigma = scheduler.sigmas[scheduler.step_index]
    gamma = min(s_churn / (len(scheduler.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        noise = randn_tensor(model_output.shape, dtype=model_output.dtype, device=model_output.device, generator=generator)
        eps = noise * s_noise
        sample = sample + eps * (sigma_hat**2 - sigma**2) ** 0.5
    if scheduler.config.prediction_type == "epsilon":
        pred_original_sample = sample - sigma_hat * model_output
    elif scheduler.config.prediction_type == "v_prediction":
        pred_original_sample = model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
    else:
        raise AssertionError("not covered")
    # The seed's replace_prediction_with_mask: frames 2..N take frame 1's x0 where static.
    pred_original_sample = pred_original_sample.clone()
    pred_original_sample[:, 1:] = torch.where(static, pred_original_sample[:, 0:1], pred_original_sample[:, 1:])
    derivative = (sample - pred_original_sample) / sigma_hat
    dt = scheduler.sigmas[scheduler.step_index + 1] - sigma_hat
    prev_sample = sample + derivative * dt
    prev_sample = prev_sample.to(model_output.dtype)
    scheduler._step_index += 1
    return prev_sample, pred_original_sample


def fake_model(sample, timestep, field):
    """Closed-form stand-in for the UNet: smooth in the sample, different in every frame."""
    return 0.5 * torch.tanh(sample) + field * (1.0 + 0.1 * float(timestep))


def make_schedulers(config: dict, steps: int, **brush_attributes):
    from diffusers import EulerDiscreteScheduler

    plain = EulerDiscreteScheduler(**config)
    brush = MotionBrushEulerScheduler.from_config(plain.config)
    for name, value in brush_attributes.items():
        setattr(brush, name, value)
    for scheduler in (plain, brush):
        scheduler.set_timesteps(steps)
    return plain, brush


def latents_like(scheduler, shape=(1, 4, 4, 16, 16), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator) * scheduler.init_noise_sigma, torch.randn(shape, generator=generator)


@pytest.mark.parametrize("config", [SVD_SCHEDULER, SD_EPSILON_SCHEDULER], ids=["v_prediction", "epsilon"])
@pytest.mark.parametrize("churn", [0.0, 0.5], ids=["no_churn", "churn"])
def test_brush_matches_a_literal_copy_of_step_with_x0_replaced_inside(config, churn):
    mask = disc_mask(32)  # resized to the 16x16 latents by both sides
    _, brush = make_schedulers(config, 6, motion_mask=mask)
    _, reference = make_schedulers(config, 6)
    static = F.interpolate(mask[None, None], size=(16, 16), mode="bilinear", align_corners=False)[0, 0] <= 0.5
    sample_brush, field = latents_like(brush)
    sample_reference = sample_brush.clone()
    worst = 0.0
    for timestep in brush.timesteps:
        output_brush = fake_model(brush.scale_model_input(sample_brush, timestep), timestep, field)
        output_reference = fake_model(reference.scale_model_input(sample_reference, timestep), timestep, field)
        step = brush.step(output_brush, timestep, sample_brush, s_churn=churn,
                          generator=torch.Generator().manual_seed(7))
        prev_reference, x0_reference = reference_step(
            reference, output_reference, timestep, sample_reference, static, s_churn=churn,
            generator=torch.Generator().manual_seed(7),
        )
        scale = prev_reference.abs().max().clamp_min(1e-12)
        worst = max(worst, ((step.prev_sample - prev_reference).abs().max() / scale).item())
        assert torch.allclose(step.pred_original_sample, x0_reference, rtol=1e-5, atol=1e-5 * x0_reference.abs().max().item())
        sample_brush, sample_reference = step.prev_sample, prev_reference
    print(f"equivalence {config['prediction_type']}, churn {churn}: worst relative difference {worst:.1e}")
    assert worst < 1e-5, worst
    # Both ended still outside the mask; the brush bit-exactly (its final step copies frame 1).
    assert (sample_brush[:, 1:] - sample_brush[:, :1]).masked_select(static).abs().max().item() == 0.0
    assert (sample_reference[:, 1:] - sample_reference[:, :1]).masked_select(static).abs().max().item() < 1e-4


def run_trajectory(scheduler, steps_record=None, *, churn=0.0, seed=0):
    sample, field = latents_like(scheduler, seed=seed)
    for timestep in scheduler.timesteps:
        output = fake_model(scheduler.scale_model_input(sample, timestep), timestep, field)
        step = scheduler.step(output, timestep, sample, s_churn=churn, generator=torch.Generator().manual_seed(3))
        if steps_record is not None:
            steps_record.append((output, timestep, sample, step))
        sample = step.prev_sample
    return sample


@pytest.mark.parametrize("churn", [0.0, 0.5])
def test_no_mask_is_the_plain_scheduler_bit_for_bit(churn):
    plain, brush = make_schedulers(SVD_SCHEDULER, 5)
    assert brush.motion_mask is None
    assert torch.equal(run_trajectory(plain, churn=churn), run_trajectory(brush, churn=churn))
    assert brush.brushed_steps == []
    if churn:  # the churn noise really enters (else the churn cases above would prove nothing)
        plain.set_timesteps(5)
        brush.set_timesteps(5)
        assert not torch.allclose(run_trajectory(plain, churn=churn), run_trajectory(brush, churn=0.0))


def test_max_steps_to_replace_none_all_k_first_k_zero_off():
    plain, brush_all = make_schedulers(SVD_SCHEDULER, 5, motion_mask=disc_mask())
    assert brush_all.max_steps_to_replace is None  # None means every step, not "off" (the seed's bug)
    run_trajectory(brush_all)
    assert brush_all.brushed_steps == [0, 1, 2, 3, 4]

    _, brush_off = make_schedulers(SVD_SCHEDULER, 5, motion_mask=disc_mask(), max_steps_to_replace=0)
    assert torch.equal(run_trajectory(brush_off), run_trajectory(plain))
    assert brush_off.brushed_steps == []

    # K = 2: the first two steps replace x0; afterwards a step is exactly the plain step on the same input.
    _, brush_two = make_schedulers(SVD_SCHEDULER, 5, motion_mask=disc_mask(), max_steps_to_replace=2)
    record: list = []
    run_trajectory(brush_two, record)
    assert brush_two.brushed_steps == [0, 1]
    twin, _ = make_schedulers(SVD_SCHEDULER, 5)
    twin.is_scale_input_called = True
    for index, (output, timestep, sample, step) in enumerate(record):
        twin._step_index = index
        plain_step = twin.step(output, timestep, sample)
        same = torch.equal(plain_step.prev_sample, step.prev_sample) and torch.equal(
            plain_step.pred_original_sample, step.pred_original_sample)
        assert same == (index >= 2), index

    # The count restarts with every set_timesteps; the mask stays.
    brush_two.set_timesteps(5)
    run_trajectory(brush_two)
    assert brush_two.brushed_steps == [0, 1] and brush_two.motion_mask is not None


def test_analytic_correction_alone_is_still_to_float_rounding():
    """snap_final_step=False: only prev' = prev - (x0' - x0)·dt/σ̂, no copy on the last step."""
    _, brush = make_schedulers(SVD_SCHEDULER, 6, motion_mask=disc_mask(), snap_final_step=False)
    final = run_trajectory(brush)
    static = brush.static_region(final)[0, 0, 0]
    moving_difference = (final[:, 1:] - final[:, :1])[..., ~static].abs().max().item()
    static_difference = (final[:, 1:] - final[:, :1])[..., static].abs().max().item()
    print(f"analytic correction, fake model: static {static_difference:.2e}, moving {moving_difference:.2f}")
    assert static_difference < 1e-6 < 0.1 < moving_difference


def test_scheduler_survives_from_config_and_rejects_what_it_cannot_do():
    from diffusers import EulerDiscreteScheduler

    brush = MotionBrushEulerScheduler.from_config(EulerDiscreteScheduler(**SVD_SCHEDULER).config)
    assert type(brush.from_config(brush.config)) is MotionBrushEulerScheduler
    assert brush.config.prediction_type == "v_prediction" and brush.config.use_karras_sigmas
    brush.motion_mask = half_mask()  # numpy is accepted too
    assert isinstance(brush.motion_mask, torch.Tensor) and brush.motion_mask.shape == (64, 64)

    sigma_min = MotionBrushEulerScheduler.from_config(brush.config, final_sigmas_type="sigma_min")
    with pytest.raises(ValueError, match="final_sigmas_type='zero'"):
        sigma_min.motion_mask = disc_mask()
    with pytest.raises(ValueError, match="NaN"):
        brush.motion_mask = torch.full((8, 8), float("nan"))
    with pytest.raises(ValueError, match="max_steps_to_replace"):
        brush.max_steps_to_replace = -1
    # A batch (two videos, or a CFG-doubled batch): every element is brushed on its own frame axis.
    x0 = torch.randn(2, 3, 4, 16, 16)
    brushed = brush.brush_x0(x0)
    static = brush.static_region(x0)[0, 0, 0]
    assert torch.equal(brushed[:, 2][..., static], x0[:, 0][..., static])
    assert torch.equal(brushed[:, 2][..., ~static], x0[:, 2][..., ~static])
    brush.set_timesteps(3)
    sample = torch.zeros(4, 4, 16, 16)  # 4-D: frames folded into the batch, the frame axis is unknown
    with pytest.raises(ValueError, match=r"\(batch, frames, channels, height, width\)"):
        brush.step(sample, brush.timesteps[0], sample)


# --------------------------------------------------------------------------- masks


def test_mask_inputs_normalise_to_float_in_0_1():
    painted = np.zeros((20, 30, 4), np.uint8)
    painted[5:10, 5:10] = (255, 0, 0, 255)  # a brush stroke on a transparent layer
    from_layer = mask_to_array(Image.fromarray(painted, "RGBA"))
    assert from_layer.dtype == np.float32 and from_layer.shape == (20, 30)
    assert from_layer[7, 7] == 1.0 and from_layer.sum() == 25

    opaque = np.zeros((20, 30, 4), np.uint8)
    opaque[..., 3] = 255
    opaque[:, 15:, :3] = 255  # an opaque black/white mask picture: its brightness counts
    assert mask_to_array(Image.fromarray(opaque, "RGBA"))[:, 15:].min() == 1.0

    grey = Image.fromarray((np.arange(30)[None].repeat(20, 0) * 8).astype(np.uint8), "L")
    assert np.isclose(mask_to_array(grey)[0, 1], 8 / 255)
    assert mask_to_array(np.ones((4, 6), bool)).min() == 1.0
    assert mask_to_array(None) is None
    resized = mask_to_array(half_mask(32, 32), size=(64, 64))
    assert resized.shape == (64, 64) and resized[:, :28].max() == 0.0 and resized[:, 36:].min() == 1.0

    with pytest.raises(ValueError, match="NaN"):
        mask_to_array(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="0..1"):
        mask_to_array(np.array([[0.0, 3.5]]))
    with pytest.raises(ValueError, match="different shape"):
        mask_to_array(np.zeros((10, 40)), size=(64, 64))
    assert not mask_is_painted(np.full((4, 4), 0.5)) and mask_is_painted(np.full((4, 4), 0.51))


def test_feather_and_composite_keep_every_unpainted_pixel_exactly():
    mask = half_mask(48, 64)
    static = feathered_static_mask(mask, 6)
    assert (static[:, :32] == 1.0).all()  # everything unpainted is exactly frame 1
    assert (static[:, 32 + 6:] == 0.0).all()  # full motion beyond the feather
    assert 0.0 < static[0, 34] < 1.0 and np.all(np.diff(static[0, 31:40]) <= 0)
    assert np.array_equal(feathered_static_mask(mask, 0), (mask <= 0.5).astype(np.float32))

    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 48, 64, 3), dtype=np.uint8)
    out = composite_static(frames, frames[0], mask, 6)
    assert out.dtype == np.uint8 and out.shape == frames.shape
    assert np.array_equal(out[:, :, :32], np.broadcast_to(frames[0, :, :32], out[:, :, :32].shape))
    assert np.array_equal(out[:, :, 38:], frames[:, :, 38:])


# --------------------------------------------------------------------------- input checks


@pytest.fixture(scope="session")
def tiny_svd_dir(tmp_path_factory):
    return save_tiny_svd(tmp_path_factory.mktemp("tiny-svd") / "tiny")


def test_bad_inputs_each_get_a_clear_message(tiny_svd_dir, tmp_path):
    settings = MotionBrushSettings()
    model = str(tiny_svd_dir)
    with pytest.raises(ValueError, match="No image was given"):
        check_inputs(None, None, settings, model=model)
    with pytest.raises(ValueError, match=r"empty \(0x0 pixels\)"):
        check_inputs(Image.new("RGB", (0, 0)), None, settings, model=model)
    with pytest.raises(ValueError, match="empty"):
        check_inputs(np.zeros((0, 10, 3), np.uint8), None, settings, model=model)
    with pytest.raises(ValueError, match="NaN"):
        check_inputs(still_image(), np.full((64, 64), np.nan), settings, model=model)
    with pytest.raises(ValueError, match="different shape"):
        check_inputs(still_image(), np.ones((64, 20)), settings, model=model)
    with pytest.raises(ValueError, match="min_guidance_scale .* above max_guidance_scale"):
        check_inputs(still_image(), None, MotionBrushSettings(min_guidance_scale=4, max_guidance_scale=2), model=model)
    with pytest.raises(ValueError):  # the settings model refuses impossible values itself
        MotionBrushSettings(frames=1)

    models_dir = tmp_path / "models"
    with pytest.raises(ValueError, match="was not found") as missing:
        check_inputs(still_image(), None, settings, model="svd-xt-missing", models_dir=models_dir)
    assert str(models_dir / "svd") in str(missing.value) and "model_index.json" in str(missing.value)
    single_file = tmp_path / "svd_xt.safetensors"
    single_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="single checkpoint file"):
        check_inputs(still_image(), None, settings, model=str(single_file), models_dir=models_dir)
    sd_folder = models_dir / "svd" / "not-svd"
    sd_folder.mkdir(parents=True)
    (sd_folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ValueError, match="StableDiffusionPipeline, not Stable Video Diffusion"):
        check_inputs(still_image(), None, settings, model="not-svd", models_dir=models_dir)


def test_soft_problems_become_notes(tiny_svd_dir, tmp_path):
    model = str(tiny_svd_dir)
    checked = check_inputs(still_image(), None, MotionBrushSettings(), model=model)
    assert checked.mask is None and any("whole image may move" in note for note in checked.notes)
    checked = check_inputs(still_image(), np.zeros((64, 64)), MotionBrushSettings(), model=model)
    assert checked.mask is None  # nothing painted: the stated decision, not an error

    odd = Image.fromarray(np.zeros((70, 100, 3), np.uint8))
    checked = check_inputs(odd, np.ones((70, 100)), MotionBrushSettings(), model=model)
    assert (checked.width, checked.height) == (128, 64) and checked.image.size == (128, 64)
    assert checked.mask.shape == (64, 128)
    assert any("multiple of 64" in note for note in checked.notes)
    checked = check_inputs(still_image(), None, MotionBrushSettings(width=100, height=64), model=model)
    assert checked.width == 128 and any("width 100 -> 128" in note for note in checked.notes)
    big = Image.fromarray(np.zeros((1080, 1920, 3), np.uint8))
    assert check_inputs(big, None, MotionBrushSettings(), model=model).image.size == (1024, 576)

    # A model folder is found by name under MODELS_DIR/svd.
    models_dir = tmp_path / "models"
    (models_dir / "svd").mkdir(parents=True)
    (models_dir / "svd" / "tiny").symlink_to(tiny_svd_dir, target_is_directory=True)
    assert check_inputs(still_image(), None, MotionBrushSettings(), model="tiny", models_dir=models_dir).model.endswith("tiny")
    # A hub id passes the check; loading it offline fails later with its own message.
    assert check_inputs(still_image(), None, MotionBrushSettings(), model="stabilityai/stable-video-diffusion-img2vid-xt").model


# --------------------------------------------------------------------------- the runner on a tiny SVD

TINY_RUN = dict(frames=4, steps=3, seed=5, decode_chunk_size=4, fps=6)


@pytest.fixture(scope="module")
def brushed(tiny_svd_dir, tmp_path_factory):
    """One run with the composite (keep_loaded) and one without, on the same loaded model."""
    runner = MotionBrushRunner()
    output = tmp_path_factory.mktemp("brush-out") / "clip.mp4"
    steps_seen = []
    with_composite = runner.run(
        still_image(), half_mask(), MotionBrushSettings(**TINY_RUN, keep_loaded=True), model=str(tiny_svd_dir),
        output_path=output, progress=lambda step, steps: steps_seen.append((step, steps)),
    )
    loaded_after_keep = runner.is_loaded
    unet = weakref.ref(runner.pipeline.unet)
    without = runner.run(still_image(), half_mask(), MotionBrushSettings(**TINY_RUN, composite=False), model=str(tiny_svd_dir))
    gc_collect()
    return dict(with_composite=with_composite, without=without, steps_seen=steps_seen, output=output,
                loaded_after_keep=loaded_after_keep, loaded_after_release=runner.is_loaded, unet=unet)


def gc_collect():
    import gc

    gc.collect()


def test_acceptance_latents_still_outside_the_mask_and_moving_inside(brushed):
    result = brushed["with_composite"]
    latents = result.latents  # (1, 4 frames, 4, 16, 16): columns 8.. may move
    assert latents.shape == (1, 4, 4, 16, 16)
    static_diff = (latents[:, 1:, ..., :8] - latents[:, :1, ..., :8]).abs().max().item()
    moving_diff = (latents[:, 1:, ..., 8:] - latents[:, :1, ..., 8:]).abs().max().item()
    print(f"tiny SVD latents: static {static_diff:.2e}, moving {moving_diff:.3f}")
    assert static_diff < 1e-6
    assert moving_diff > 0.1
    assert result.brushed_steps == [0, 1, 2]
    assert brushed["steps_seen"] == [(1, 3), (2, 3), (3, 3)]
    # Same seed, same latents with or without the composite (it is applied after decoding).
    assert torch.equal(result.latents, brushed["without"].latents)


def test_acceptance_composite_makes_pixels_outside_the_feathered_mask_equal(brushed):
    frames = np.stack(brushed["with_composite"].frames)
    weight = brushed["with_composite"].static_weight
    still = weight == 1.0
    assert still[:, :32].all() and not still[:, 32 + 8:].any()
    assert np.array_equal(frames[1:][:, still], np.broadcast_to(frames[0][still], frames[1:][:, still].shape))
    raw = np.stack(brushed["without"].frames).astype(int)
    leak = np.abs(raw[1:][:, still] - raw[0][still]).max()
    print(f"temporal VAE decoder leak into the static region without the composite: {leak} levels of 255")
    assert leak > 0  # why the composite exists: equal latents do not decode to equal pixels
    assert np.abs(frames[1:, :, 40:].astype(int) - frames[0, :, 40:]).max() > 0  # the painted half moves


def test_analytic_correction_on_the_tiny_svd_pipeline(tiny_svd_dir):
    """The pipeline with the brush's pure analytic correction (no final copy): still to float rounding."""
    from diffusers import StableVideoDiffusionPipeline

    pipe = StableVideoDiffusionPipeline(**build_tiny_svd_components())
    pipe.set_progress_bar_config(disable=True)
    brush = MotionBrushEulerScheduler.from_config(pipe.scheduler.config)
    brush.motion_mask, brush.snap_final_step = torch.from_numpy(half_mask()), False
    pipe.scheduler = brush
    latents = pipe(still_image(), height=64, width=64, num_frames=4, num_inference_steps=3, decode_chunk_size=4,
                   generator=torch.Generator().manual_seed(5), output_type="latent").frames
    static_diff = (latents[:, 1:, ..., :8] - latents[:, :1, ..., :8]).abs().max().item()
    print(f"tiny SVD latents, analytic correction only: static {static_diff:.2e}")
    assert static_diff < 1e-6


def test_the_model_is_released_unless_kept(brushed):
    assert brushed["loaded_after_keep"] is True
    assert brushed["loaded_after_release"] is False
    assert brushed["unet"]() is None  # nothing else holds the UNet: its memory is free


def test_outputs_written_with_the_right_frame_count(brushed):
    from lib_vidguide.video_io import read_all_frames

    result = brushed["with_composite"]
    assert result.video_path == brushed["output"] and result.video_path.is_file()
    assert len(read_all_frames(result.video_path)) == 4
    assert [p.name for p in result.frame_paths] == [f"frame_{i:05d}.png" for i in range(4)]
    assert np.array_equal(np.asarray(Image.open(result.frame_paths[2])), result.frames[2])
    assert result.frames_dir == result.video_path.with_suffix("")


@pytest.mark.parametrize("output_format", ["mp4", "gif", "webp"])
def test_each_format_is_written_whole_or_not_at_all(tmp_path, output_format):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    path = write_animation(tmp_path / f"clip.{output_format}", frames, fps=8)
    if output_format == "mp4":
        from lib_vidguide.video_io import probe

        assert probe(path).frame_count == 5
    else:
        with Image.open(path) as animation:
            assert animation.n_frames == 5 and animation.format == output_format.upper()

    def failing():
        yield frames[0]
        yield frames[1]
        raise RuntimeError("the encoder died")

    target = tmp_path / "failed" / f"clip.{output_format}"
    with pytest.raises(RuntimeError):
        write_animation(target, failing(), fps=8)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary part file either
    with pytest.raises(ValueError, match="ends in"):
        write_animation(tmp_path / "clip.gif", frames, fps=8, output_format="mp4")


def test_interrupt_stops_sampling_writes_nothing_and_releases(tiny_svd_dir, tmp_path):
    runner = MotionBrushRunner()
    calls = []

    def should_interrupt():
        calls.append(1)
        return len(calls) >= 2  # after the first sampling step

    output = tmp_path / "clip.webp"
    with pytest.raises(MotionBrushInterrupted, match="after step 1 of 3"):
        runner.run(still_image(), half_mask(), MotionBrushSettings(**TINY_RUN, output_format="webp"),
                   model=str(tiny_svd_dir), output_path=output, should_interrupt=should_interrupt)
    assert not runner.is_loaded
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- CLI


def test_cli_options_come_from_the_settings_model():
    import argparse

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["motion-brush", "a.png", "none", "b.gif", "--model", "m", "--frames", "14",
                              "--max-steps-to-replace", "10", "--no-composite", "--feather-px", "3"])
    settings = settings_from_namespace(args)
    assert (settings.frames, settings.max_steps_to_replace, settings.composite, settings.feather_px) == (14, 10, False, 3)
    assert settings.steps == MotionBrushSettings().steps  # not given: the model's default
    assert args.handler.__name__ == "run_cli"


def run_cli_process(*arguments: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "lib_vidguide", "motion-brush", *arguments],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300)


def test_cli_end_to_end_on_a_saved_tiny_svd(tiny_svd_dir, tmp_path):
    still_image().save(tmp_path / "still.png")
    Image.fromarray((half_mask() * 255).astype(np.uint8)).save(tmp_path / "mask.png")
    output = tmp_path / "out" / "clip.gif"
    done = run_cli_process(str(tmp_path / "still.png"), str(tmp_path / "mask.png"), str(output),
                           "--model", str(tiny_svd_dir), "--frames", "4", "--steps", "2", "--seed", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["output"] == str(output) and report["frames"] == 4 and report["seed"] == 3
    assert output.is_file() and len(list((tmp_path / "out" / "clip").glob("frame_*.png"))) == 4
    assert "step 2/2" in done.stderr


def test_cli_bad_input_exits_2_with_one_error_line(tmp_path):
    still_image().save(tmp_path / "still.png")
    models_dir = tmp_path / "models"
    failed = run_cli_process(str(tmp_path / "still.png"), "none", str(tmp_path / "clip.mp4"),
                             "--model", "no-such-model", "--models-dir", str(models_dir))
    assert failed.returncode == 2
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in failed.stderr
    assert str(models_dir / "svd") in lines[0]
    assert not (tmp_path / "clip.mp4").exists()
