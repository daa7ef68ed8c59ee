"""The AlwaysOn flow guidance inside the (stand-in) WebUI, through the img2img API mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from host_session import forge_mode, sample_picture, to_b64

SAMPLERS = ["Euler", "DPM++ 2M", "DDIM"]
TITLE = "VidGuide flow guidance"


@pytest.fixture
def final_latents(monkeypatch, fresh_state):
    """Records the latent each img2img sampling returns (before the VAE decode)."""
    from modules import processing

    captured: list[torch.Tensor] = []
    original = processing.StableDiffusionProcessingImg2Img.sample

    def recording_sample(self, *args, **kwargs):
        samples = original(self, *args, **kwargs)
        captured.append(samples.detach().clone())
        return samples

    monkeypatch.setattr(processing.StableDiffusionProcessingImg2Img, "sample", recording_sample)
    return captured


def guide_latent(image) -> torch.Tensor:
    """k0 as the extension encodes it: the VAE posterior's mean, scaled. Forge's
    encode_first_stage returns a sample of it: there the stand-in's own VAE gives the mean."""
    from modules import shared

    model = shared.sd_model
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        if forge_mode():
            return model.scale_factor * model.vae.encode(x).latent_dist.mode()
        return model.get_first_stage_encoding(model.encode_first_stage(x).mode())


def alwayson_args(*, enabled=True, guide=None, previous=None, strength=1.0, schedule="constant",
             weight_mode="uniform", flow="dis_medium", warp="pixel"):
    args = [enabled, to_b64(guide) if guide is not None else None, to_b64(previous) if previous is not None else None,
            strength, schedule, weight_mode, flow, warp]
    return {TITLE: {"args": args}}


def run(webui, **kwargs):
    # img2img output depends on the global RNG state left by earlier requests (HOST_A1111.md §9):
    # compare requests from the same state.
    torch.manual_seed(2024)
    return webui.img2img_image(**kwargs)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_disabled_or_zero_weight_is_bit_identical_to_plain(fresh_state, sampler):
    webui = fresh_state
    guide = sample_picture(seed=7)
    plain = run(webui, sampler_name=sampler)
    disabled = run(webui, sampler_name=sampler, alwayson=alwayson_args(enabled=False, guide=guide))
    zero_strength = run(webui, sampler_name=sampler, alwayson=alwayson_args(guide=guide, strength=0.0))
    zero_schedule = run(webui, sampler_name=sampler, alwayson=alwayson_args(guide=guide, schedule="0:0, 1:0"))
    guided = run(webui, sampler_name=sampler, alwayson=alwayson_args(guide=guide, strength=0.5))
    assert np.array_equal(plain, disabled)
    assert np.array_equal(plain, zero_strength)
    assert np.array_equal(plain, zero_schedule)
    assert not np.array_equal(plain, guided), "a guided run must change the output"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_full_weight_lands_on_the_guide_latent(final_latents, fresh_state, sampler):
    webui = fresh_state
    guide = sample_picture(seed=7)
    k0 = guide_latent(guide)
    outputs = []
    for seed in (1, 99):
        outputs.append(run(webui, sampler_name=sampler, seed=seed, alwayson=alwayson_args(guide=guide)))
    for latent in final_latents:
        assert (latent - k0).abs().max().item() <= 1e-4
    assert np.abs(outputs[0].astype(int) - outputs[1].astype(int)).max() <= 1, "the output must not depend on the seed"


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_half_weight_reproduces_the_guide_in_that_half_only(final_latents, fresh_state, sampler):
    from lib_vidguide.guidance import GuideTarget, StepGuidance
    from lib_vidguide.webui import hooks
    from modules import processing

    guide = sample_picture(seed=7)
    k0 = guide_latent(guide)
    weight = torch.zeros((1, 1, 8, 8))
    weight[..., :, :4] = 1.0  # the left half
    guidance = StepGuidance(GuideTarget(k0, weight), "constant", 1.0)

    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[sample_picture(seed=3)], prompt="a painting", seed=5, steps=10, denoising_strength=0.5,
        width=64, height=64, sampler_name=sampler,
    )
    p.scripts = fresh_state.runner
    p.script_args = tuple(fresh_state.runner.default_script_args())
    p._vg_video_owned = True
    hooks.activate(p, guidance)
    try:
        processing.process_images(p)
    finally:
        hooks.deactivate(guidance)
    latent = final_latents[-1]
    assert (latent[..., :4] - k0[..., :4]).abs().max().item() <= 1e-4
    assert (latent[..., 4:] - k0[..., 4:]).abs().mean().item() > 0.05
    assert all(record.rule != "skip" for record in guidance.history)


def test_title_is_matched_case_insensitively_and_args_are_positional(final_latents, fresh_state):
    webui = fresh_state
    guide = sample_picture(seed=7)
    k0 = guide_latent(guide)
    # Only the first three args: the rest keep their UI defaults (strength 1, seed_showcase, ...).
    short = {"vidguide FLOW Guidance": {"args": [True, to_b64(guide), None]}}
    run(webui, sampler_name="Euler", alwayson=short)
    full = alwayson_args(guide=guide)
    run(webui, sampler_name="Euler", alwayson={"VIDGUIDE flow guidance": full[TITLE]})
    showcase_latent, constant_latent = final_latents[-2], final_latents[-1]
    assert (constant_latent - k0).abs().max() <= 1e-4
    # The showcase schedule blends at 0.6/0.4: closer to k0 than the plain run, but not on it.
    run(webui, sampler_name="Euler")
    plain_latent = final_latents[-1]
    assert (showcase_latent - k0).abs().mean() < 0.7 * (plain_latent - k0).abs().mean()
    assert (showcase_latent - k0).abs().max() > 1e-2


def test_a_bare_list_is_ignored_as_the_host_does(fresh_state):
    webui = fresh_state
    guide = sample_picture(seed=7)
    plain = run(webui, sampler_name="Euler")
    bare = run(webui, sampler_name="Euler", alwayson={TITLE: [True, to_b64(guide), None, 1.0, "constant"]})
    assert np.array_equal(plain, bare)


def test_unknown_script_title_is_a_422(fresh_state):
    from fastapi import HTTPException

    with pytest.raises(HTTPException) as error:
        fresh_state.img2img(alwayson={"no such script": {"args": []}})
    assert error.value.status_code == 422


def test_enabled_without_a_guide_runs_plain_and_says_why(fresh_state, caplog):
    webui = fresh_state
    plain = run(webui, sampler_name="Euler")
    with caplog.at_level("ERROR", logger="vidguide"):
        response_image = run(webui, sampler_name="Euler", alwayson={TITLE: {"args": [True, None, None]}})
    assert np.array_equal(plain, response_image)
    assert any("no guide image" in record.getMessage() for record in caplog.records)


def test_bad_base64_guide_is_a_clear_error_not_a_crash(fresh_state, caplog):
    webui = fresh_state
    with caplog.at_level("ERROR", logger="vidguide"):
        run(webui, sampler_name="Euler", alwayson={TITLE: {"args": [True, "data:image/png;base64,bm90IGFuIGltYWdl", None]}})
    messages = [record.getMessage() for record in caplog.records if "could not decode" in record.getMessage()]
    assert messages and messages[0].rstrip(". ").split(":")[-1].strip(), "the reason must not be empty"


def test_bad_schedule_text_is_rejected_with_the_presets_named(fresh_state, caplog):
    webui = fresh_state
    with caplog.at_level("ERROR", logger="vidguide"):
        run(webui, sampler_name="Euler", alwayson=alwayson_args(guide=sample_picture(seed=7), schedule="__import__('os')"))
    message = " ".join(record.getMessage() for record in caplog.records)
    assert "seed_showcase" in message and "progress:weight" in message


def test_hooks_are_removed_after_every_generation(fresh_state):
    from modules import script_callbacks

    run(fresh_state, sampler_name="Euler", alwayson=alwayson_args(guide=sample_picture(seed=7)))
    for category in ("callbacks_cfg_denoiser", "callbacks_cfg_after_cfg"):
        assert not script_callbacks.callback_map[category]


def test_callbacks_leaked_by_a_failed_generation_never_touch_the_next_one(fresh_state, monkeypatch):
    from lib_vidguide.webui import hooks
    from modules import script_callbacks, shared

    webui = fresh_state
    plain = run(webui, sampler_name="Euler")
    model = shared.sd_model
    original = model.apply_model
    calls = {"n": 0}

    def failing_apply_model(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("NansException: a tensor with all NaNs was produced in Unet")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "apply_model", failing_apply_model)
    with pytest.raises(RuntimeError, match="NansException"):
        run(webui, sampler_name="Euler", alwayson=alwayson_args(guide=sample_picture(seed=7)))
    monkeypatch.setattr(model, "apply_model", original)
    # The host never reached postprocess: our callbacks are still registered (as in the real host).
    assert hooks.active() is not None
    assert script_callbacks.callback_map["callbacks_cfg_after_cfg"]
    # The next plain request must be untouched, and it cleans the leftovers up.
    after = run(webui, sampler_name="Euler")
    assert np.array_equal(plain, after)
    assert hooks.active() is None
    assert not script_callbacks.callback_map["callbacks_cfg_after_cfg"]


def test_guidance_failing_mid_run_turns_itself_off_and_the_generation_finishes(fresh_state, monkeypatch, caplog):
    from lib_vidguide.guidance import StepGuidance

    calls = {"n": 0}
    original = StepGuidance.apply

    def flaky_apply(self, output):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return original(self, output)

    monkeypatch.setattr(StepGuidance, "apply", flaky_apply)
    with caplog.at_level("ERROR", logger="vidguide"):
        image = run(fresh_state, sampler_name="Euler", alwayson=alwayson_args(guide=sample_picture(seed=7)))
    assert image.shape == (64, 64, 3)
    assert calls["n"] == 2, "after the failure, guidance must be off for the rest of the generation"
    assert sum("flow guidance failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "DDIM"])
def test_progress_follows_the_noise_level_not_the_lagging_counter(fresh_state, monkeypatch, sampler):
    from lib_vidguide.webui import hooks
    from modules import script_callbacks

    seen = []

    def probe(params):
        seen.append(params.sampling_step)

    script_callbacks.on_cfg_after_cfg(probe)
    guidances = []
    original = hooks.activate

    def recording_activate(p, guidance):
        guidances.append(guidance)
        original(p, guidance)

    monkeypatch.setattr(hooks, "activate", recording_activate)
    try:
        run(fresh_state, sampler_name=sampler, steps=10, alwayson=alwayson_args(guide=sample_picture(seed=7), schedule="seed_showcase"))
    finally:
        script_callbacks.remove_callbacks_for_function(probe)
    history = guidances[0].history
    progress = [record.progress for record in history]
    assert progress[0] == 0.0
    assert all(b > a for a, b in zip(progress, progress[1:])), progress
    assert seen[:2] == [0, 0], "the host's step counter lags by one call"
    # The seed's showcase schedule: 0.6 before 80 % progress, 0.4 after.
    for record in history:
        assert record.weight == pytest.approx(0.6 if record.progress < 0.8 else 0.4)
    if sampler == "DDIM":
        assert len(history) == 4  # t_enc - 1 calls (HOST_A1111.md §9)
        # A1111's DDIM hands epsilon and integer timesteps to the callbacks; Forge's, x0 and sigma
        # (HOST_A1111.md §1.5, §9.1): the exact last step is taken in that space.
        assert history[-1].rule == ("x0-last" if forge_mode() else "eps-last")
        assert [r.timestep for r in history] == pytest.approx([401, 301, 201, 101], abs=1e-3)
    else:
        assert len(history) == 6  # t_enc + 1


def test_previous_source_frame_warps_the_guide_by_the_flow(fresh_state, monkeypatch):
    """Same previous frame as the init image: zero motion, so the same result as no flow at all;
    a shifted previous frame moves the guide and lowers weights where the flow fails."""
    from lib_vidguide.webui import alwayson

    webui = fresh_state
    init = sample_picture(seed=3, shift=0)
    guide = sample_picture(seed=7)
    targets = []
    original = alwayson.build_guide_target

    def recording(*args, **kwargs):
        target = original(*args, **kwargs)
        targets.append(target)
        return target

    monkeypatch.setattr(alwayson, "build_guide_target", recording)
    common = dict(guide=guide, schedule="seed_showcase", weight_mode="consistency")
    no_flow = run(webui, init=init, alwayson=alwayson_args(**common))
    same_frame = run(webui, init=init, alwayson=alwayson_args(previous=init, **common))
    moved = run(webui, init=init, alwayson=alwayson_args(previous=sample_picture(seed=3, shift=4), **common))
    assert np.array_equal(no_flow, same_frame)
    assert not np.array_equal(no_flow, moved)
    assert torch.equal(targets[0].latent, targets[1].latent)
    assert targets[1].weight_map.min() > 0.99
    assert not torch.equal(targets[0].latent, targets[2].latent)
    assert targets[2].weight_map.min() < 0.5  # the strip that enters the frame has no flow back


def test_full_weight_at_cfg_1_lands_on_the_guide_latent(final_latents, fresh_state):
    """At CFG 1 Forge drops the uncond (text_uncond is None in on_cfg_denoiser): still guided."""
    guide = sample_picture(seed=7)
    run(fresh_state, sampler_name="Euler", cfg_scale=1.0, alwayson=alwayson_args(guide=guide))
    assert (final_latents[-1] - guide_latent(guide)).abs().max().item() <= 1e-4


def test_tensors_kept_after_the_generation_are_ordinary_tensors(fresh_state):
    """Forge generates under torch.inference_mode(): what the extension keeps (the guide latent,
    the captured final latent) must still be usable, in place and with autograd, outside it."""
    from lib_vidguide.webui import compat
    from modules import processing, shared

    p = processing.StableDiffusionProcessingImg2Img(
        init_images=[sample_picture(seed=3)], prompt="a painting", seed=5, steps=4, denoising_strength=0.5,
        width=64, height=64, sampler_name="Euler",
    )
    p.scripts = fresh_state.runner
    p.script_args = tuple(fresh_state.runner.default_script_args())
    p._vg_capture_latent = True
    processing.process_images(p)
    with torch.inference_mode(forge_mode()):
        guide = compat.encode_rgb(shared.sd_model, np.asarray(sample_picture(seed=7)))
    for kept in (p._vg_last_latent, guide):
        assert not kept.is_inference()
        kept.add_(0.0)
        weight = torch.ones((), requires_grad=True)
        (weight * kept).sum().backward()


_OTHER_MODE_SCRIPT = """
import sys
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [sys.argv[2], str(Path(sys.argv[2]) / "host"), sys.argv[3]]
torch.set_num_threads(1)
from host_session import HostSession
import test_webui_guidance as t

webui = HostSession.start(Path(sys.argv[3]))
np.savez(sys.argv[1], **t.pictures_for_the_cross_mode_check(webui))
"""


def pictures_for_the_cross_mode_check(webui) -> dict:
    guide = sample_picture(seed=7)
    pictures = {}
    for sampler in SAMPLERS:
        webui.reset()
        pictures[f"{sampler} plain"] = run(webui, sampler_name=sampler)
        pictures[f"{sampler} w=1"] = run(webui, sampler_name=sampler, alwayson=alwayson_args(guide=guide))
    return pictures


def test_the_other_host_gives_the_same_pictures(fresh_state, tmp_path):
    """The same requests with the stand-in playing the other host (A1111 <-> Forge, in a subprocess
    of this interpreter): plain and fully guided pictures agree within one level per pixel."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    other = "a1111" if forge_mode() else "forge"
    result = subprocess.run(
        [sys.executable, "-c", _OTHER_MODE_SCRIPT, str(tmp_path / "other.npz"), str(tests), str(tests.parent)],
        env={**os.environ, "VIDGUIDE_STANDIN_HOST": other}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = np.load(tmp_path / "other.npz")
    ours = pictures_for_the_cross_mode_check(fresh_state)
    for name, picture in ours.items():
        assert np.abs(picture.astype(int) - theirs[name].astype(int)).max() <= 1, name
