"""Sampler plumbing shared by both families, and the VAE encode/decode helpers."""

import inspect
from collections import namedtuple

import torch

from modules import devices, shared, standin_mode
from modules.shared import opts, state

SamplerDataTuple = namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


class InterruptedException(BaseException):
    pass


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def _cheap_approximation(sample):
    # A fixed linear latent->RGB map, as "Approx cheap" is: what approximation=None gives callers
    # that forget to ask for a full decode.
    coefs = torch.tensor(
        [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
    ).to(sample)
    image = torch.einsum("...lxy,lr -> ...rxy", sample, coefs)
    return torch.nn.functional.interpolate(image, scale_factor=8, mode="nearest").clamp(-1, 1)


def samples_to_images_tensor(sample, approximation=None, model=None):
    """Latents to an RGB tensor in [-1, 1]; approximation=None means the live-preview method
    (in Forge, never a full decode: "Full" there becomes Approx NN)."""
    if approximation is None:
        approximation = approximation_indexes.get(opts.show_progress_type, 0)
        if standin_mode.FORGE and approximation == 0:
            approximation = 1
    if approximation != 0:
        return _cheap_approximation(sample)
    model = model or shared.sd_model
    with torch.no_grad():
        return model.decode_first_stage(sample.to(devices.dtype_vae))


def decode_first_stage(model, x):
    approximation = approximation_indexes.get(opts.sd_vae_decode_method, 0)
    return samples_to_images_tensor(x, approximation, model)


def images_tensor_to_samples(image, approximation=None, model=None):
    """An RGB tensor in [0, 1] to scaled latents; samples the VAE posterior with the global RNG."""
    model = model or shared.sd_model
    image = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1
    with torch.no_grad():
        if len(image) > 1:
            return torch.stack(
                [model.get_first_stage_encoding(model.encode_first_stage(torch.unsqueeze(img, 0)))[0] for img in image]
            )
        return model.get_first_stage_encoding(model.encode_first_stage(image))


def store_latent(decoded):
    state.current_latent = decoded


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config: SamplerData = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = 0.0
        self.s_tmin = 0.0
        self.s_tmax = float("inf")
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.eta_infotext_field = "Eta"
        self.eta_default = 1.0
        self.conditioning_key = "crossattn"
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def launch_img2img(self, p, x, xi, t_enc, conditioning, unconditional_conditioning, image_conditioning, kwargs):
        """Both families end sample_img2img the same way: t_enc + 1 steps from the noised xi."""
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {
            "cond": conditioning,
            "image_cond": image_conditioning,
            "uncond": unconditional_conditioning,
            "cond_scale": p.cfg_scale,
            "s_min_uncond": self.s_min_uncond,
        }
        return self.launch_sampling(
            t_enc + 1,
            lambda: self.func(
                self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args, disable=True,
                callback=self.callback_state, **kwargs,
            ),
        )

    def number_of_needed_noises(self, p):
        return p.steps

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = p.mask if hasattr(p, "mask") else None
        self.model_wrap_cfg.nmask = p.nmask if hasattr(p, "nmask") else None
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)

        extra_params_kwargs = {}
        parameters = inspect.signature(self.func).parameters
        for param_name in self.extra_params:
            if hasattr(p, param_name) and param_name in parameters:
                extra_params_kwargs[param_name] = getattr(p, param_name)
        if "eta" in parameters:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            extra_params_kwargs["eta"] = self.eta
        return extra_params_kwargs

    def add_infotext(self, p):
        pass
