"""The standalone runner's samplers are k-diffusion's, and its schedule is the WebUI's img2img one."""

from __future__ import annotations

import pytest
import torch

from lib_vidguide import sampling


@pytest.fixture(scope="module")
def denoiser():
    from lib_vidguide.tiny_models import build_tiny_components

    components = build_tiny_components()
    return sampling.EpsDenoiser(components["unet"], components["scheduler"].alphas_cumprod), components


def test_eps_denoiser_is_compvis_denoiser(denoiser):
    from k_diffusion.external import CompVisDenoiser

    ours, components = denoiser

    class LDM:
        alphas_cumprod = components["scheduler"].alphas_cumprod

        def apply_model(self, x, t, cond):
            return components["unet"](x, t, encoder_hidden_states=cond).sample

    reference = CompVisDenoiser(LDM())
    sigmas = torch.tensor([0.03, 0.7, 3.0, 14.0])
    assert torch.equal(ours.sigma_to_t(sigmas), reference.sigma_to_t(sigmas))
    assert torch.equal(ours.get_sigmas(12), reference.get_sigmas(12))

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    cond, uncond = torch.randn(1, 77, 32, generator=generator), torch.randn(1, 77, 32, generator=generator)
    sigma = torch.tensor([2.5])
    with torch.no_grad():
        x0 = ours(x, sigma, cond=cond, uncond=uncond, cond_scale=1.0)
        expected = reference(x, sigma, cond=cond)
    torch.testing.assert_close(x0, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, reference_name", [("euler", "sample_euler"), ("dpmpp_2m", "sample_dpmpp_2m")])
def test_samplers_match_k_diffusion(name, reference_name):
    import k_diffusion.sampling as kds

    def model(x, sigma):
        return torch.tanh(x) * 0.8 + 0.1 * sigma[:, None, None, None].sin()

    sigmas = kds.get_sigmas_karras(10, 0.03, 14.6)
    torch.testing.assert_close(sampling.get_sigmas_karras(10, 0.03, 14.6), sigmas)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    ours = sampling.SAMPLERS[name](model, x.clone(), sigmas)
    theirs = getattr(kds, reference_name)(model, x.clone(), sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_img2img_schedule_is_the_webuis(denoiser):
    ours, _ = denoiser
    sigmas = ours.get_sigmas(10)
    schedule = sampling.img2img_schedule(sigmas, 0.5)
    assert len(schedule) == 7  # t_enc + 1 = 6 sampler steps
    assert torch.equal(schedule, sigmas[10 - 5 - 1:])


def test_noise_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sampling.noise_like((1, 4, 8, 8), 7)
    b = sampling.noise_like((1, 4, 8, 8), 7)
    assert torch.equal(a, b)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert not torch.equal(a, sampling.noise_like((1, 4, 8, 8), 8))


def test_unknown_sampler_is_named():
    with pytest.raises(ValueError, match="dpmpp_2m"):
        sampling.check_sampler("heun")
