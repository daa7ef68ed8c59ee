"""The classifier-free-guidance denoiser and its three callbacks, in the host's order.

A1111 mode, per call: interrupt check; inpaint blend before denoising (timesteps samplers only); rows
x_in = [cond rows..., x] (the last B rows are the per-image latents); on_cfg_denoiser, whose
x/image_cond/sigma/text_cond/text_uncond are read back; the model; on_cfg_denoised (not read
back); the CFG combine; inpaint blend after denoising (k-diffusion); last_latent and the live
preview taken; on_cfg_after_cfg, whose x is read back; step += 1.

Forge mode (``forward_forge``, modelled on Forge's modules/sd_samplers_cfg_denoiser.py and
HOST_A1111.md §6.3/§9.1), per call: interrupt check; for DDIM-like samplers
(``classic_ddim_eps_estimation``) the timestep becomes sigma and x is rescaled to k-diffusion
scale; on_cfg_denoiser with the B per-image rows only (cond and uncond are batched later, by
``sampling_function``) and text_uncond None when CFG is 1; the model in k-diffusion
conventions (x0); on_cfg_denoised is never called; last_latent and the preview; on_cfg_after_cfg
(x0 for every sampler, read back); step += 1; DDIM-like samplers get x0 turned back into epsilon.
"""

import torch

from modules import prompt_parser, sd_samplers_common, shared, standin_mode
from modules.script_callbacks import (
    AfterCFGCallbackParams,
    CFGDenoisedParams,
    CFGDenoiserParams,
    cfg_after_cfg_callback,
    cfg_denoised_callback,
    cfg_denoiser_callback,
)
from modules.shared import state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.steps = None
        self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.sampler = sampler
        self.p = None
        self.cond_scale_miltiplier = 1.0
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None
        self.mask_before_denoising = False
        if standin_mode.FORGE:
            self.classic_ddim_eps_estimation = False

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if standin_mode.FORGE:
            return self.forward_forge(x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond)
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        def apply_blend(current_latent):
            return current_latent * self.nmask + self.init_latent * self.mask

        if self.mask_before_denoising and self.mask is not None:
            x = apply_blend(x)

        repeats = [len(conds) for conds in conds_list]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat(
            [torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [image_cond]
        )

        denoiser_params = CFGDenoiserParams(
            x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, tensor, uncond, self
        )
        cfg_denoiser_callback(denoiser_params)
        x_in = denoiser_params.x
        image_cond_in = denoiser_params.image_cond
        sigma_in = denoiser_params.sigma
        tensor = denoiser_params.text_cond
        uncond = denoiser_params.text_uncond

        cond_in = torch.cat([tensor, uncond])
        x_out = self.inner_model(x_in, sigma_in, cond={"c_crossattn": [cond_in], "c_concat": [image_cond_in]})

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        denoised = self.combine_denoised(x_out, conds_list, uncond, cond_scale * self.cond_scale_miltiplier)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = apply_blend(denoised)

        image_rows = [conds[0][0] for conds in conds_list]
        self.sampler.last_latent = self.get_pred_x0(
            torch.cat([x_in[i:i + 1] for i in image_rows]), torch.cat([x_out[i:i + 1] for i in image_rows]), sigma
        )
        sd_samplers_common.store_latent(self.sampler.last_latent)

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1
        return denoised

    def forward_forge(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        original_x_device, original_x_dtype = x.device, x.dtype

        if self.classic_ddim_eps_estimation:
            acd = self.inner_model.inner_model.alphas_cumprod
            fake_sigmas = ((1 - acd) / acd) ** 0.5
            real_sigma = fake_sigmas[sigma.round().long().clip(0, int(fake_sigmas.shape[0]))]
            x = x * (((real_sigma ** 2.0 + 1.0) ** 0.5)[:, None, None, None])
            sigma = real_sigma

        conds_list, tensor = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None

        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, tensor, uncond, self)
        cfg_denoiser_callback(denoiser_params)

        denoised = sampling_function(self, denoiser_params, cond_scale, conds_list)

        preview = self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(preview)

        after_cfg_callback_params = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after_cfg_callback_params)
        denoised = after_cfg_callback_params.x

        self.step += 1

        if self.classic_ddim_eps_estimation:
            return (x - denoised) / sigma[:, None, None, None]
        return denoised.to(device=original_x_device, dtype=original_x_dtype)


_predictors = {}


def _predictor():
    """Forge's backend predicts x0 from (x, sigma) in k-diffusion scaling for every sampler."""
    import k_diffusion.external

    model = shared.sd_model
    if id(model) not in _predictors:
        _predictors.clear()
        _predictors[id(model)] = k_diffusion.external.CompVisDenoiser(model)
    return _predictors[id(model)]


def sampling_function(denoiser, params, cond_scale, conds_list):
    """Forge's backend.sampling.sampling_function, reduced: reads the (possibly reassigned) params,
    batches cond rows then uncond rows, and combines them by CFG (cond only when uncond is None)."""
    x, sigma, image_cond = params.x, params.sigma, params.image_cond
    tensor, uncond = params.text_cond, params.text_uncond
    repeats = [len(conds) for conds in conds_list]
    x_in = [torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)]
    sigma_in = [torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)]
    image_cond_in = [torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)]
    cond_in = tensor
    if uncond is not None:
        x_in, sigma_in, image_cond_in = x_in + [x], sigma_in + [sigma], image_cond_in + [image_cond]
        cond_in = torch.cat([tensor, uncond])
    x_out = _predictor()(torch.cat(x_in), torch.cat(sigma_in),
                         cond={"c_crossattn": [cond_in], "c_concat": [torch.cat(image_cond_in)]})
    if uncond is None:
        return torch.stack([x_out[conds[0][0]] for conds in conds_list])
    return denoiser.combine_denoised(x_out, conds_list, uncond, cond_scale * denoiser.cond_scale_miltiplier)
