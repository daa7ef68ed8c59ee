"""The blend, the epsilon path and progress, on explicit tensors."""

from __future__ import annotations

import math

import pytest
import torch

from lib_vidguide.guidance import (
    GuideTarget,
    SamplerConventions,
    StepGuidance,
    blend_x0,
    eps_landing_on,
    x0_landing_on,
    eps_to_x0,
    x0_to_eps,
)


def _alphas_cumprod():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def test_blend_is_exact_at_both_ends_and_linear_between():
    generator = torch.Generator().manual_seed(0)
    x0, k0 = torch.randn(2, 4, 8, 8, generator=generator) * 3, torch.randn(2, 4, 8, 8, generator=generator) * 3
    assert torch.equal(blend_x0(x0, k0, 0.0), x0)
    assert torch.equal(blend_x0(x0, k0, 1.0), k0)
    weight = torch.rand(1, 1, 8, 8, generator=generator)
    torch.testing.assert_close(blend_x0(x0, k0, weight), (1 - weight) * x0 + weight * k0)


def test_eps_and_x0_conversions_are_inverse():
    generator = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    for alpha_bar in (0.99, 0.5, 0.05):
        x0 = eps_to_x0(x_t, eps, alpha_bar)
        torch.testing.assert_close(x0_to_eps(x_t, x0, alpha_bar), eps, rtol=1e-5, atol=1e-5)


def test_eps_landing_on_makes_a_ddim_step_land_on_the_target():
    generator = torch.Generator().manual_seed(2)
    x_t, target = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    alphas = _alphas_cumprod()
    for t, t_prev in ((101, 1), (501, 401)):
        a, a_prev = float(alphas[t]), float(alphas[t_prev])
        eps = eps_landing_on(x_t, target, a, a_prev)
        pred_x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * eps
        torch.testing.assert_close(x_prev, target, rtol=0, atol=1e-4)


def test_x0_landing_on_makes_forges_ddim_step_land_on_the_target():
    """Forge's DDIM: the callbacks see x = x_t / sqrt(a) and sigma; the returned x0 becomes
    eps = (x - x0) / sigma, and DDIM then steps from x_t with that eps (HOST_A1111.md §6.3)."""
    generator = torch.Generator().manual_seed(4)
    x_t, target = torch.randn(1, 4, 8, 8, generator=generator), torch.randn(1, 4, 8, 8, generator=generator)
    alphas = _alphas_cumprod()
    for t, t_prev in ((101, 1), (501, 401)):
        a, a_prev = float(alphas[t]), float(alphas[t_prev])
        sigma = math.sqrt((1 - a) / a)
        x = x_t / math.sqrt(a)
        x0 = x0_landing_on(x, target, sigma, a_prev)
        eps = (x - x0) / sigma
        pred_x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * eps
        torch.testing.assert_close(x_prev, target, rtol=0, atol=1e-4)


def test_x0_guidance_takes_ddims_exact_last_step_in_x0_space():
    """x0 outputs with a DDIM grid (Forge): plain x0 blending, except at the last call."""
    generator = torch.Generator().manual_seed(5)
    x, x0, k0 = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    alphas = _alphas_cumprod()
    grid = list(range(1, 1000, 100))
    conventions = SamplerConventions(alphas_cumprod=alphas, ddim_timesteps=tuple(grid))
    guidance = StepGuidance(GuideTarget(k0, torch.ones(1, 1, 8, 8)), "constant", 1.0, conventions)
    for t in (201, 101):
        sigma = torch.tensor([math.sqrt((1 - float(alphas[t])) / float(alphas[t]))])
        guidance.observe_input(x, sigma)
        out = guidance.apply(x0)
        expected = k0 if t == 201 else x0_landing_on(x, k0, float(sigma), float(alphas[1]))
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    assert [record.rule for record in guidance.history] == ["x0", "x0-last"]


def _ddim_conventions(grid):
    return SamplerConventions(output_is_eps=True, sigma_is_timestep=True, alphas_cumprod=_alphas_cumprod(),
                              ddim_timesteps=tuple(grid))


def test_eps_guidance_equals_the_seeds_formula_between_steps():
    generator = torch.Generator().manual_seed(3)
    x_t, eps, k0 = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    weight = torch.rand(1, 1, 8, 8, generator=generator)
    grid = list(range(1, 1000, 100))
    guidance = StepGuidance(GuideTarget(k0, weight), "constant", 1.0, _ddim_conventions(grid))
    guidance.observe_input(x_t, torch.tensor([401.0]))
    guided_eps = guidance.apply(eps)
    a = float(_alphas_cumprod()[401])
    seed_x0 = (1 - weight) * eps_to_x0(x_t, eps, a) + weight * k0
    torch.testing.assert_close(guided_eps, x0_to_eps(x_t, seed_x0, a), rtol=1e-4, atol=1e-4)
    assert guidance.history[-1].rule == "eps"


def test_the_last_ddim_call_lands_on_the_guide():
    generator = torch.Generator().manual_seed(4)
    x_t, eps, k0 = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(3))
    grid = list(range(1, 1000, 100))
    guidance = StepGuidance(GuideTarget(k0, torch.ones(1, 1, 8, 8)), "constant", 1.0, _ddim_conventions(grid))
    guidance.observe_input(x_t, torch.tensor([101.0]))
    guided_eps = guidance.apply(eps)
    assert guidance.history[-1].rule == "eps-last"
    alphas = _alphas_cumprod()
    a, a_prev = float(alphas[101]), float(alphas[1])
    pred_x0 = (x_t - math.sqrt(1 - a) * guided_eps) / math.sqrt(a)
    x_prev = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * guided_eps
    torch.testing.assert_close(x_prev, k0, rtol=0, atol=1e-4)


def test_zero_weight_returns_the_output_object_untouched():
    guidance = StepGuidance(GuideTarget(torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 8, 8)), "0:0, 1:0", 1.0,
                            SamplerConventions(sigma_to_t=lambda s: s * 0 + 500))
    output = torch.randn(1, 4, 8, 8)
    guidance.observe_input(output, torch.tensor([3.0]))
    assert guidance.apply(output) is output


def test_progress_is_measured_from_the_first_call_noise_level():
    times = iter([600.0, 450.0, 300.0, 0.0])
    conventions = SamplerConventions(sigma_to_t=lambda sigma: torch.tensor(next(times)))
    guidance = StepGuidance(GuideTarget(torch.zeros(1, 4, 2, 2), torch.ones(1, 1, 2, 2)), "linear_decay", 0.5, conventions)
    seen = []
    for _ in range(4):
        guidance.observe_input(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))
        seen.append((guidance.progress(), guidance.current_weight()))
    assert seen == [(0.0, 0.5), (0.25, 0.375), (0.5, 0.25), (1.0, 0.0)]


def test_sigma_to_timestep_fallback_matches_k_diffusion():
    from k_diffusion.external import DiscreteEpsDDPMDenoiser

    alphas = _alphas_cumprod()
    reference = DiscreteEpsDDPMDenoiser(None, alphas, quantize=False)
    conventions = SamplerConventions(alphas_cumprod=alphas)
    for sigma in (0.03, 0.5, 2.0, 14.0):
        assert conventions.timestep_of(torch.tensor([sigma])) == pytest.approx(
            reference.sigma_to_t(torch.tensor(sigma)).item(), abs=1e-3
        )


def test_guide_target_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="resize it"):
        GuideTarget(torch.zeros(1, 4, 8, 8), torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="batch, 1, height, width"):
        GuideTarget(torch.zeros(1, 4, 8, 8), torch.ones(1, 2, 8, 8))


def test_strength_outside_the_range_is_refused():
    with pytest.raises(ValueError, match="outside"):
        StepGuidance(GuideTarget(torch.zeros(1, 4, 2, 2), torch.ones(1, 1, 2, 2)), "constant", 1.5)


@pytest.mark.parametrize("sampler", ["sample_euler", "sample_dpmpp_2m", "sample_heun", "sample_lms"])
def test_real_k_diffusion_samplers_end_on_the_guide_with_full_weight(sampler):
    """A closed-form denoiser (x0 = 0.5 x): guided at w = 1, every sampler lands on k0."""
    import k_diffusion.sampling as kds

    k0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    weight = torch.zeros(1, 1, 8, 8)
    weight[..., :4] = 1.0
    guidance = StepGuidance(GuideTarget(k0, weight), "constant", 1.0,
                            SamplerConventions(sigma_to_t=lambda sigma: sigma * 50))

    def model(x, sigma):
        guidance.observe_input(x, sigma)
        return guidance.apply(0.5 * x)

    sigmas = kds.get_sigmas_karras(8, 0.03, 14.6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6)) * sigmas[0]
    out = getattr(kds, sampler)(model, x, sigmas, disable=True)
    assert (out[..., :4] - k0[..., :4]).abs().max() <= 1e-4
    assert (out[..., 4:] - k0[..., 4:]).abs().mean() > 0.1


def test_extra_terms_blend_after_the_main_one_in_x0_and_eps_space():
    from lib_vidguide.guidance import GuideTerm

    generator = torch.Generator().manual_seed(7)
    x_t, out, k_main, k_extra = (torch.randn(1, 4, 8, 8, generator=generator) for _ in range(4))
    ones = torch.ones(1, 1, 8, 8)
    extra = [GuideTerm(GuideTarget(k_extra, ones), "constant", 0.25)]

    x0_guidance = StepGuidance(GuideTarget(k_main, ones), "constant", 0.5,
                               SamplerConventions(sigma_to_t=lambda s: s * 0 + 300), extra=list(extra))
    x0_guidance.observe_input(x_t, torch.tensor([2.0]))
    expected = torch.lerp(torch.lerp(out, k_main, 0.5), k_extra, 0.25)
    torch.testing.assert_close(x0_guidance.apply(out), expected)
    assert x0_guidance.history[-1].extra_weights == (0.25,)

    grid = list(range(1, 1000, 100))
    eps_guidance = StepGuidance(GuideTarget(k_main, ones), "constant", 0.5, _ddim_conventions(grid),
                                extra=[GuideTerm(GuideTarget(k_extra, ones), "constant", 0.25)])
    eps_guidance.observe_input(x_t, torch.tensor([401.0]))
    a = float(_alphas_cumprod()[401])
    x0_expected = torch.lerp(torch.lerp(eps_to_x0(x_t, out, a), k_main, 0.5), k_extra, 0.25)
    torch.testing.assert_close(eps_to_x0(x_t, eps_guidance.apply(out), a), x0_expected, rtol=1e-4, atol=1e-4)


def test_only_an_extra_term_still_guides_and_all_zero_skips():
    from lib_vidguide.guidance import GuideTerm

    k_extra = torch.full((1, 4, 2, 2), 3.0)
    guidance = StepGuidance(GuideTarget(torch.zeros(1, 4, 2, 2), torch.ones(1, 1, 2, 2)), "constant", 0.0,
                            SamplerConventions(sigma_to_t=lambda s: s * 0 + 100),
                            extra=[GuideTerm(GuideTarget(k_extra, torch.ones(1, 1, 2, 2)), "constant", 1.0)])
    guidance.observe_input(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))
    assert torch.equal(guidance.apply(torch.zeros(1, 4, 2, 2)), k_extra)
    guidance.extra[0].strength = 0.0
    output = torch.zeros(1, 4, 2, 2)
    assert guidance.apply(output) is output and guidance.history[-1].rule == "skip"
