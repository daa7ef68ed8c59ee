"""Flow guidance inside the sampler: blend the predicted x0 with a guide latent.

At every denoiser call, x0' = (1 - w) * x0 + w * k0, where k0 is the previous
stylized frame warped by optical flow (in latent space) and
w = strength * schedule(progress) * weight_map. Everything here works on
explicit tensors; the host adapters (``lib_vidguide.webui``, the diffusers
runner) decide where the tensors come from.

Two output conventions exist:

* x0 samplers (k-diffusion, and every sampler in Forge): the denoiser returns
  x0, which is blended directly.
* epsilon samplers (A1111's DDIM, PLMS, UniPC): the denoiser returns epsilon.
  Blending x0 and converting back (the seed's formula) is the same as
  eps' = lerp(eps, eps_k, w) with eps_k the epsilon whose x0 is k0, because
  both conversions are affine. At DDIM's last call the schedule ends at
  alpha_bar[1] < 1, not at 0, so eps_k is instead the epsilon whose DDIM update
  lands exactly on k0 (HOST_A1111.md §9).

Forge runs DDIM with x0 after CFG (in k-diffusion scaling, sigma instead of t) and
turns it back into epsilon itself; its DDIM still ends at alpha_bar[1], so at the last
call the x0 handed back is the one whose DDIM update lands on k0 (HOST_A1111.md §9.1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

from .schedules import Schedule, parse_schedule

if TYPE_CHECKING:
    import torch


def blend_x0(x0: "torch.Tensor", k0: "torch.Tensor", weight: "torch.Tensor | float") -> "torch.Tensor":
    """(1 - w) * x0 + w * k0, exact at w = 0 and w = 1 (``torch.lerp``)."""
    import torch

    if not torch.is_tensor(weight):
        weight = torch.tensor(float(weight), dtype=x0.dtype, device=x0.device)
    return torch.lerp(x0, k0.to(x0), weight.to(x0))


def eps_to_x0(x_t: "torch.Tensor", eps: "torch.Tensor", alpha_bar: float) -> "torch.Tensor":
    return (x_t - math.sqrt(1.0 - alpha_bar) * eps) / math.sqrt(alpha_bar)


def x0_to_eps(x_t: "torch.Tensor", x0: "torch.Tensor", alpha_bar: float) -> "torch.Tensor":
    """The epsilon whose DDPM x0 estimate at noise level ``alpha_bar`` is ``x0``."""
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1.0 - alpha_bar)


def eps_landing_on(x_t: "torch.Tensor", target: "torch.Tensor", alpha_bar: float, alpha_bar_prev: float) -> "torch.Tensor":
    """The epsilon for which a deterministic DDIM step from ``x_t`` lands on ``target``.

    DDIM (eta = 0): x_prev = sqrt(a_prev / a) * x_t + c * eps with
    c = sqrt(1 - a_prev) - sqrt(a_prev * (1 - a) / a); solve for eps.
    """
    scale_x = math.sqrt(alpha_bar_prev / alpha_bar)
    scale_eps = math.sqrt(1.0 - alpha_bar_prev) - math.sqrt(alpha_bar_prev * (1.0 - alpha_bar) / alpha_bar)
    return (target - scale_x * x_t) / scale_eps


def x0_landing_on(x: "torch.Tensor", target: "torch.Tensor", sigma: float, alpha_bar_prev: float) -> "torch.Tensor":
    """The x0 for which a deterministic DDIM step lands on ``target``, in k-diffusion scaling.

    With x = x_t / sqrt(a) and sigma = sqrt((1 - a) / a), DDIM's epsilon is (x - x0) / sigma and
    x_prev = sqrt(a_prev) * x0 + sqrt(1 - a_prev) * (x - x0) / sigma; solve for x0.
    """
    c = math.sqrt(1.0 - alpha_bar_prev) / sigma
    return (target - c * x) / (math.sqrt(alpha_bar_prev) - c)


@dataclass(frozen=True)
class SamplerConventions:
    """What the host's denoiser hands to the after-CFG hook, per sampler family.

    ``output_is_eps``: the after-CFG tensor is epsilon (A1111 DDIM/PLMS/UniPC).
    ``sigma_is_timestep``: the noise-level argument holds DDPM timesteps 0..999.
    ``alphas_cumprod``: the model's alpha_bar table, needed for epsilon outputs.
    ``ddim_timesteps``: the DDIM timestep grid, when known, for the exact last step (with
    x0 outputs too: Forge's DDIM, whose callbacks see sigma and x0).
    ``sigma_to_t``: maps sigma to a (continuous) DDPM timestep, for progress.
    """

    output_is_eps: bool = False
    sigma_is_timestep: bool = False
    alphas_cumprod: "torch.Tensor | None" = None
    ddim_timesteps: tuple[int, ...] | None = None
    sigma_to_t: Callable[["torch.Tensor"], "torch.Tensor"] | None = None

    def timestep_of(self, sigma: "torch.Tensor") -> float:
        """One DDPM timestep (0..999) for the batch's noise level."""
        value = sigma.detach().flatten()[0:1].float().cpu()
        if self.sigma_is_timestep:
            return float(value.round().item())
        if self.sigma_to_t is not None:
            return float(self.sigma_to_t(value).item())
        if self.alphas_cumprod is not None:
            return _sigma_to_t_from_alphas(value, self.alphas_cumprod)
        raise ValueError("cannot measure progress: the sampler gives sigma but no sigma->timestep mapping is known")


def _sigma_to_t_from_alphas(sigma: "torch.Tensor", alphas_cumprod: "torch.Tensor") -> float:
    import torch

    sigmas = ((1 - alphas_cumprod.float().cpu()) / alphas_cumprod.float().cpu()).sqrt()
    log_sigmas = sigmas.log()
    log_sigma = sigma.float().log().clamp(log_sigmas[0], log_sigmas[-1])
    high = int(torch.searchsorted(log_sigmas, log_sigma).clamp(1, len(log_sigmas) - 1).item())
    low = high - 1
    frac = float((log_sigmas[high] - log_sigma) / (log_sigmas[high] - log_sigmas[low]))
    return high - frac


@dataclass
class GuideTarget:
    """The guide for one generation, already at latent resolution.

    ``latent``: k0, shape (1 or B, C, h, w), in the sampler's latent scale.
    ``weight_map``: per-pixel weight in [0, 1], shape (1 or B, 1, h, w).
    """

    latent: "torch.Tensor"
    weight_map: "torch.Tensor"

    def __post_init__(self) -> None:
        if self.latent.ndim != 4:
            raise ValueError(f"guide latent must be (batch, channels, height, width), got shape {tuple(self.latent.shape)}")
        if self.weight_map.ndim != 4 or self.weight_map.shape[1] != 1:
            raise ValueError(f"weight map must be (batch, 1, height, width), got shape {tuple(self.weight_map.shape)}")
        if self.weight_map.shape[-2:] != self.latent.shape[-2:]:
            raise ValueError(
                f"weight map size {tuple(self.weight_map.shape[-2:])} differs from the guide latent's "
                f"{tuple(self.latent.shape[-2:])}; resize it with flow.resize_to_latent"
            )


@dataclass
class StepRecord:
    """What one guided denoiser call did (kept for tests, previews and reports).

    ``weight`` is the main guide's scalar weight, ``extra_weights`` those of the extra terms.
    """

    timestep: float
    progress: float
    weight: float
    rule: str
    extra_weights: tuple[float, ...] = ()


@dataclass
class GuideTerm:
    """One guide with its own schedule and strength (drift control adds a second one)."""

    target: GuideTarget
    schedule: Schedule
    strength: float
    _on_device: tuple = ()

    def __post_init__(self) -> None:
        self.schedule = parse_schedule(self.schedule)
        if not (0.0 <= float(self.strength) <= 1.0):
            raise ValueError(f"guidance strength {self.strength} is outside [0, 1]")

    def weight_at(self, progress: float) -> float:
        return float(self.strength) * self.schedule(progress)

    def like(self, output: "torch.Tensor"):
        """The guide and weight map on the output's device and dtype, copied once per generation."""
        key = (output.device, output.dtype)
        if not self._on_device or self._on_device[0] != key:
            self._on_device = (
                key,
                self.target.latent.to(device=output.device, dtype=output.dtype),
                self.target.weight_map.to(device=output.device, dtype=output.dtype),
            )
        return self._on_device[1], self._on_device[2]


@dataclass
class StepGuidance:
    """Per-generation guidance state: feed it the denoiser input, then the output.

    Progress is measured from the real noise level: 0 at the first denoiser call of the
    run, 1 at timestep 0. The host's step counters lag and, with DDIM, do not even reach
    their own totals (HOST_A1111.md §9). ``extra`` terms are blended after the main one,
    each with its own schedule: x0' = lerp(lerp(x0, k0, w0), k1, w1).
    """

    target: GuideTarget
    schedule: Schedule = field(default_factory=lambda: parse_schedule("seed_showcase"))
    strength: float = 1.0
    conventions: SamplerConventions | None = None
    extra: list[GuideTerm] = field(default_factory=list)
    history: list[StepRecord] = field(default_factory=list)
    _x_t: "torch.Tensor | None" = None
    _sigma: float | None = None
    _timestep: float | None = None
    _start_timestep: float | None = None

    def __post_init__(self) -> None:
        self.main = GuideTerm(self.target, self.schedule, self.strength)
        self.schedule = self.main.schedule

    def observe_input(self, x_t: "torch.Tensor", sigma: "torch.Tensor") -> None:
        """The per-image noisy latents and their noise level, before the model runs."""
        if self.conventions is None:
            raise RuntimeError("StepGuidance needs the sampler's conventions before its first step")
        self._x_t = x_t
        # One device-to-host read per step: the noise level and the timestep come from the same value.
        sigma_value = sigma.detach().flatten()[0:1].float().cpu()
        self._sigma = float(sigma_value.item())
        self._timestep = self.conventions.timestep_of(sigma_value)
        if self._start_timestep is None:
            self._start_timestep = self._timestep

    def progress(self) -> float:
        if self._timestep is None or not self._start_timestep:
            return 0.0
        return min(max((self._start_timestep - self._timestep) / self._start_timestep, 0.0), 1.0)

    def current_weight(self) -> float:
        return self.main.weight_at(self.progress())

    def apply(self, output: "torch.Tensor") -> "torch.Tensor":
        """Guide one after-CFG output (x0 or epsilon, per the conventions)."""
        if self._timestep is None:
            raise RuntimeError("StepGuidance.apply called before observe_input for this denoiser call")
        progress = self.progress()
        weights = [term.weight_at(progress) for term in [self.main, *self.extra]]
        if not any(weights):
            self.history.append(StepRecord(self._timestep, progress, 0.0, "skip", tuple(weights[1:])))
            return output
        rule = "x0"
        for term, scalar in zip([self.main, *self.extra], weights):
            if scalar == 0.0:
                continue
            guide, weight_map = term.like(output)
            if self.conventions.output_is_eps:
                guide, rule = self._eps_toward(guide, output)
            elif self.conventions.ddim_timesteps:
                guide, rule = self._x0_toward(guide, output)
            output = blend_x0(output, guide, weight_map * scalar)
        self.history.append(StepRecord(self._timestep, progress, weights[0], rule, tuple(weights[1:])))
        return output

    def _eps_toward(self, guide: "torch.Tensor", eps: "torch.Tensor"):
        """The epsilon that moves this call's DDIM update onto ``guide`` (its x0, or at DDIM's
        last call, where the schedule stops at alpha_bar[1] < 1, the updated latent itself)."""
        if self.conventions.alphas_cumprod is None or self._x_t is None:
            raise ValueError("epsilon-output samplers need alphas_cumprod and the denoiser input")
        alphas = self.conventions.alphas_cumprod
        t = int(round(self._timestep))
        alpha_bar = float(alphas[t])
        x_t = self._x_t.to(eps)
        previous_t = self._previous_ddim_timestep(t)
        if previous_t is not None and previous_t == self.conventions.ddim_timesteps[0]:
            return eps_landing_on(x_t, guide, alpha_bar, float(alphas[previous_t])), "eps-last"
        return x0_to_eps(x_t, guide, alpha_bar), "eps"

    def _x0_toward(self, guide: "torch.Tensor", x0: "torch.Tensor"):
        """For x0 outputs of a DDIM run (Forge): the guide itself, except at the last call, where
        it is the x0 whose DDIM update lands on ``guide``."""
        if self.conventions.alphas_cumprod is None or self._x_t is None or not self._sigma:
            return guide, "x0"
        previous_t = self._previous_ddim_timestep(int(round(self._timestep)))
        if previous_t is not None and previous_t == self.conventions.ddim_timesteps[0]:
            alpha_prev = float(self.conventions.alphas_cumprod[previous_t])
            return x0_landing_on(self._x_t.to(x0), guide, self._sigma, alpha_prev), "x0-last"
        return guide, "x0"

    def _previous_ddim_timestep(self, t: int) -> int | None:
        grid = self.conventions.ddim_timesteps
        if not grid or t not in grid:
            return None
        index = grid.index(t)
        return grid[index - 1] if index > 0 else None
