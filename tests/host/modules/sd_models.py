"""A tiny latent-diffusion model with the LDM surface the WebUI's samplers and processing use.

It wraps real diffusers components (lib_vidguide.tiny_models) behind the CompVis LDM methods:
``apply_model`` (epsilon), ``alphas_cumprod``, ``encode_first_stage`` returning a posterior,
``get_first_stage_encoding`` that *samples* it with the global torch RNG (as LDM does),
``decode_first_stage``, ``get_learned_conditioning``.

Forge mode (``ForgeTinyDiffusion``): as Forge's ``backend.diffusion_engine`` SD1.5 engine,
``encode_first_stage`` samples the posterior itself (global RNG) and returns the scaled latent,
``get_first_stage_encoding`` is the identity, and encode/decode/conditioning run under
``torch.inference_mode()`` (HOST_A1111.md §6.3).
"""

import types

import torch


class TinyLatentDiffusion(torch.nn.Module):
    parameterization = "eps"
    cond_stage_key = "txt"
    is_sdxl = False
    is_sd1 = True
    is_sd2 = False
    is_sd3 = False

    def __init__(self, components):
        super().__init__()
        self.unet = components["unet"]
        self.vae = components["vae"]
        self.text_encoder = components["text_encoder"]
        self.tokenizer = components["tokenizer"]
        scheduler = components["scheduler"]
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone().float())
        self.scale_factor = float(self.vae.config.scaling_factor)
        self.model = types.SimpleNamespace(conditioning_key="crossattn")
        self.sd_checkpoint_info = types.SimpleNamespace(name_for_extra="tiny", model_name="tiny-random", hash="00000000")
        self.sd_model_hash = "00000000"
        self.latent_channels = 4

    def apply_model(self, x_noisy, t, cond):
        context = torch.cat(cond["c_crossattn"], 1) if isinstance(cond, dict) else cond
        timesteps = t if torch.is_tensor(t) else torch.tensor([t] * x_noisy.shape[0])
        return self.unet(x_noisy, timesteps.float(), encoder_hidden_states=context).sample

    def get_learned_conditioning(self, prompts):
        ids = self.tokenizer(
            list(prompts), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids
        return self.text_encoder(ids)[0]

    def encode_first_stage(self, x):
        return self.vae.encode(x).latent_dist

    def get_first_stage_encoding(self, encoder_posterior):
        if torch.is_tensor(encoder_posterior):
            z = encoder_posterior
        else:
            z = encoder_posterior.sample()
        return self.scale_factor * z

    def decode_first_stage(self, z):
        return self.vae.decode(z / self.scale_factor).sample

    def ema_scope(self):
        import contextlib

        return contextlib.nullcontext()


class ForgeTinyDiffusion(TinyLatentDiffusion):
    @torch.inference_mode()
    def get_learned_conditioning(self, prompts):
        return super().get_learned_conditioning(prompts)

    @torch.inference_mode()
    def encode_first_stage(self, x):
        posterior = self.vae.encode(x).latent_dist
        # backend/nn/vae.py DiagonalGaussianDistribution.sample(): the global torch RNG
        sample = posterior.mean + posterior.std * torch.randn(posterior.mean.shape).to(posterior.mean.device)
        return (self.scale_factor * sample).to(x)

    def get_first_stage_encoding(self, x):
        return x  # legacy code, do not change

    @torch.inference_mode()
    def decode_first_stage(self, z):
        return super().decode_first_stage(z).to(z)


def load_tiny_model(seed=0):
    from lib_vidguide.tiny_models import build_tiny_components
    from modules import standin_mode

    model_class = ForgeTinyDiffusion if standin_mode.FORGE else TinyLatentDiffusion
    return model_class(build_tiny_components(seed)).eval()
