"""Samplers in k-diffusion's functional shape, for the standalone (diffusers) runner.

``model(x, sigma, **extra_args)`` returns x0; samplers take explicit sigmas and never
touch the global RNG. :class:`EpsDenoiser` turns a diffusers epsilon UNet into such a
model exactly as k-diffusion's ``CompVisDenoiser`` does for the WebUI (sigma from
alpha_bar, log-sigma interpolation to a continuous timestep, c_in scaling), so the
same img2img schedule and the same guidance apply in both places.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class EpsDenoiser(torch.nn.Module):
    """A diffusers epsilon UNet with classifier-free guidance, returning x0."""

    def __init__(self, unet, alphas_cumprod: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.register_buffer("sigmas", ((1 - alphas_cumprod.float()) / alphas_cumprod.float()).sqrt())
        self.register_buffer("log_sigmas", self.sigmas.log())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        log_sigma = sigma.float().log().to(self.log_sigmas.device)
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]).exp()

    def get_sigmas(self, n: int) -> torch.Tensor:
        """The WebUI's "Automatic" schedule for Euler: n timesteps evenly spaced, then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return torch.cat([self.t_to_sigma(t), t.new_zeros([1])])

    def forward(self, x, sigma, *, cond, uncond, cond_scale: float = 7.0):
        c_in = 1.0 / (sigma**2 + 1.0).sqrt()
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        t = self.sigma_to_t(sigma_in)
        context = torch.cat([cond.expand(len(x), -1, -1), uncond.expand(len(x), -1, -1)])
        eps = self.unet(x_in * c_in[:, None, None, None].to(x), t, encoder_hidden_states=context).sample
        eps_cond, eps_uncond = eps.chunk(2)
        eps = eps_uncond + cond_scale * (eps_cond - eps_uncond)
        return x - sigma[:, None, None, None].to(x) * eps


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) noise levels, then 0."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def img2img_schedule(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a ``steps``-long schedule the WebUI's img2img runs: t_enc + 1 sigmas."""
    steps = len(sigmas) - 1
    t_enc = int(min(strength, 0.999) * steps)
    return sigmas[steps - t_enc - 1:]


def _to_d(x, sigma, denoised):
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                 callback: Optional[Callable] = None) -> torch.Tensor:
    """Algorithm 2 (Euler steps) of Karras et al. (2022), without churn."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpmpp_2m(model: Callable, x: torch.Tensor, sigmas: torch.Tensor, extra_args: Optional[dict] = None,
                    callback: Optional[Callable] = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), as k-diffusion writes it."""
    extra_args = extra_args or {}
    ones = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * ones, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigmas[i + 1] / sigmas[i]) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


SAMPLERS = {"euler": sample_euler, "dpmpp_2m": sample_dpmpp_2m}


def sigmas_for(sampler: str, denoiser: EpsDenoiser, steps: int) -> torch.Tensor:
    """Each sampler's default schedule in the WebUI: Euler uniform in t, DPM++ 2M Karras."""
    if sampler == "dpmpp_2m":
        return get_sigmas_karras(steps, denoiser.sigma_min, denoiser.sigma_max)
    return denoiser.get_sigmas(steps)


def check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not available in the standalone runner; choose one of {sorted(SAMPLERS)}")
    return name


def noise_like(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(int(seed) % (2**63))
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


__all__ = [
    "EpsDenoiser", "SAMPLERS", "get_sigmas_karras", "img2img_schedule", "noise_like", "sample_dpmpp_2m",
    "sample_euler", "sigmas_for", "check_sampler",
]
