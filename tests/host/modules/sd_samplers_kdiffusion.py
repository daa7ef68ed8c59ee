"""k-diffusion samplers as the host drives them (real k_diffusion.sampling functions)."""

import inspect

import k_diffusion.external
import k_diffusion.sampling
import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.shared import opts

samplers_k_diffusion = [
    ("Euler a", "sample_euler_ancestral", ["k_euler_a", "k_euler_ancestral"], {"uses_ensd": True}),
    ("Euler", "sample_euler", ["k_euler"], {}),
    ("DPM++ 2M", "sample_dpmpp_2m", ["k_dpmpp_2m"], {"scheduler": "karras"}),
    ("Heun", "sample_heun", ["k_heun"], {"second_order": True}),
]

samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: KDiffusionSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]

sampler_extra_params = {
    "sample_euler": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
    "sample_heun": ["s_churn", "s_tmin", "s_tmax", "s_noise"],
}


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            denoiser = (
                k_diffusion.external.CompVisVDenoiser
                if shared.sd_model.parameterization == "v"
                else k_diffusion.external.CompVisDenoiser
            )
            self.model_wrap = denoiser(shared.sd_model, quantize=opts.enable_quantization)
        return self.model_wrap


def _karras(n, sigma_min, sigma_max, device="cpu"):
    return k_diffusion.sampling.get_sigmas_karras(n=n, sigma_min=sigma_min, sigma_max=sigma_max, device=device)


schedulers = {"Karras": _karras, "karras": _karras}


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname if callable(funcname) else getattr(k_diffusion.sampling, self.funcname)
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        discard_next_to_last_sigma = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard_next_to_last_sigma:
            discard_next_to_last_sigma = True
        steps += 1 if discard_next_to_last_sigma else 0

        scheduler_name = getattr(p, "scheduler", None) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        scheduler = schedulers.get(scheduler_name) if scheduler_name else None

        if scheduler is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            sigma_min, sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
            sigmas = scheduler(n=steps, sigma_min=sigma_min, sigma_max=sigma_max, device="cpu")

        if discard_next_to_last_sigma:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]

        extra_params_kwargs = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "sigma_min" in parameters:
            extra_params_kwargs["sigma_min"] = sigma_sched[-2]
        if "sigma_max" in parameters:
            extra_params_kwargs["sigma_max"] = sigma_sched[0]
        if "n" in parameters:
            extra_params_kwargs["n"] = len(sigma_sched) - 1
        if "sigmas" in parameters:
            extra_params_kwargs["sigmas"] = sigma_sched

        return self.launch_img2img(p, x, xi, t_enc, conditioning, unconditional_conditioning, image_conditioning,
                                   extra_params_kwargs)
