"""DDIM as A1111 v1.10.1 runs it: epsilon after CFG, integer timesteps in place of sigma.

img2img noises the init latent at timesteps[t_enc] but the loop runs len(timesteps_sched)-1
iterations, from timesteps[t_enc-1] down to timesteps[1]: t_enc-1 UNet calls, the first one
at a lower timestep than the noise, and the last update lands on alpha_bar[timesteps[0]] =
alpha_bar[1] < 1, not on x0 (HOST_A1111.md §3.5, §9).

Forge mode: the same loop, but its CFG denoiser (``classic_ddim_eps_estimation``) shows the
callbacks sigma and x0 and hands epsilon back (sd_samplers_cfg_denoiser.forward_forge); its
``model_wrap`` has no ``sigma_to_t``.
"""

import inspect

import numpy as np
import torch

from modules import devices, sd_samplers_common, shared, standin_mode
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
from modules.shared import opts


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sqrt_one_minus_alphas = torch.sqrt(1 - alphas)
    sigmas = eta * np.sqrt(
        (1 - alphas_prev.cpu().numpy()) / (1 - alphas.cpu().numpy()) * (1 - alphas.cpu().numpy() / alphas_prev.cpu().numpy())
    )
    extra_args = {} if extra_args is None else extra_args
    ones_rows = x.new_ones((x.shape[0]))
    ones_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * ones_rows, **extra_args)
        a_t = alphas[index].item() * ones_x
        a_prev = alphas_prev[index].item() * ones_x
        sigma_t = float(sigmas[index]) * ones_x
        sqrt_one_minus_at = sqrt_one_minus_alphas[index].item() * ones_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t ** 2).sqrt() * e_t
        noise = sigma_t * torch.randn_like(x)
        x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": pred_x0})
    return x


samplers_timesteps = [("DDIM", ddim, ["ddim"], {})]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        if standin_mode.FORGE:
            # Forge: sigma/x0 conventions around the callbacks, epsilon back to the DDIM loop.
            self.classic_ddim_eps_estimation = True
            return
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        a_t = self.alphas[sigma.to(dtype=int)][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.eta_option_field = "eta_ddim"
        self.eta_infotext_field = "Eta DDIM"
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        discard_next_to_last_sigma = self.config is not None and self.config.options.get("discard_next_to_last_sigma", False)
        if opts.always_discard_next_to_last_sigma and not discard_next_to_last_sigma:
            discard_next_to_last_sigma = True
        steps += 1 if discard_next_to_last_sigma else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=devices.device) + 1, 0, 999)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        timesteps_sched = timesteps[:t_enc]
        alphas_cumprod = shared.sd_model.alphas_cumprod
        xi = x * torch.sqrt(alphas_cumprod[timesteps[t_enc]]) + noise * torch.sqrt(1 - alphas_cumprod[timesteps[t_enc]])

        extra_params_kwargs = self.initialize(p)
        if "timesteps" in inspect.signature(self.func).parameters:
            extra_params_kwargs["timesteps"] = timesteps_sched

        return self.launch_img2img(p, x, xi, t_enc, conditioning, unconditional_conditioning, image_conditioning,
                                   extra_params_kwargs)
