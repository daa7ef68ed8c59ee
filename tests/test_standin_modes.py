"""The stand-in host plays A1111 or Forge (VIDGUIDE_STANDIN_HOST): the facts of HOST_A1111.md §1.4-1.5,
§6.3 and §9.1 that the extension depends on hold in the mode the suite runs in."""

from __future__ import annotations

import pytest
import torch
from host_session import forge_mode


def test_the_extension_detects_the_host_the_stand_in_plays(webui):
    from lib_vidguide.webui import compat
    from modules import shared

    assert compat.is_forge() is forge_mode()
    assert getattr(shared.cmd_opts, "always_cpu", False) is forge_mode()


@pytest.fixture
def probes(fresh_state, monkeypatch):
    """Every CFG callback call, and the x0 estimate each sampler step reports, for one img2img."""
    from modules import script_callbacks, sd_samplers_common

    seen = {"denoiser": [], "denoised": [], "after": [], "step_x0": []}
    callbacks = {
        "denoiser": lambda params: seen["denoiser"].append(params),
        "denoised": lambda params: seen["denoised"].append(params),
        "after": lambda params: seen["after"].append(params.x.clone()),
    }
    script_callbacks.on_cfg_denoiser(callbacks["denoiser"])
    script_callbacks.on_cfg_denoised(callbacks["denoised"])
    script_callbacks.on_cfg_after_cfg(callbacks["after"])
    original = sd_samplers_common.Sampler.callback_state

    def recording_callback_state(self, d):
        seen["step_x0"].append(d["denoised"].clone())
        return original(self, d)

    monkeypatch.setattr(sd_samplers_common.Sampler, "callback_state", recording_callback_state)
    yield fresh_state, seen
    for callback in callbacks.values():
        script_callbacks.remove_callbacks_for_function(callback)


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_cfg_callbacks_see_what_the_host_hands_them(probes, sampler):
    webui, seen = probes
    webui.img2img(sampler_name=sampler, batch_size=2, steps=10, denoising_strength=0.5)
    calls = 4 if sampler == "DDIM" else 6  # t_enc - 1 and t_enc + 1 (HOST_A1111.md §9)
    assert len(seen["denoiser"]) == len(seen["after"]) == calls
    first = seen["denoiser"][0]
    sigmas = [float(params.sigma[-1]) for params in seen["denoiser"]]
    if forge_mode():
        assert not seen["denoised"], "Forge never calls on_cfg_denoised"
        assert first.x.shape[0] == 2, "Forge: one row per image, cond/uncond batched later"
        assert first.x.is_inference() and seen["after"][0].is_inference()
    else:
        assert len(seen["denoised"]) == calls
        assert first.x.shape[0] == 4, "A1111: cond rows, then the uncond rows (the per-image latents)"
        assert not first.x.is_inference()
    if sampler == "DDIM" and not forge_mode():
        assert sigmas == [401, 301, 201, 101]  # integer timesteps, and epsilon after CFG
        assert all((after - x0).abs().max() > 0.1 for after, x0 in zip(seen["after"], seen["step_x0"]))
    else:
        # sigma, falling; after CFG the x0 the sampler's step then reports (Forge: every sampler)
        assert all(0 < b < a < 20 for a, b in zip(sigmas, sigmas[1:]))
        assert all((after - x0).abs().max() <= 1e-5 for after, x0 in zip(seen["after"], seen["step_x0"]))


def test_the_uncond_is_dropped_at_cfg_1_in_forge_only(probes):
    webui, seen = probes
    webui.img2img(sampler_name="Euler", cfg_scale=1.0)
    assert (seen["denoiser"][0].text_uncond is None) is forge_mode()


def test_a_preview_decode_is_never_a_full_decode_in_forge(webui, monkeypatch):
    from modules import sd_samplers_common, shared

    monkeypatch.setitem(shared.opts.data, "show_progress_type", "Full")
    latent = torch.zeros((1, 4, 8, 8))
    full = sd_samplers_common.samples_to_images_tensor(latent, 0)
    preview = sd_samplers_common.samples_to_images_tensor(latent, None)
    assert torch.equal(preview, full) is not forge_mode()


def test_postprocess_image_args_carry_the_index_in_forge(webui):
    from modules import scripts

    if forge_mode():
        assert scripts.PostprocessImageArgs("image", 3).index == 3
    else:
        with pytest.raises(TypeError):
            scripts.PostprocessImageArgs("image", 3)
