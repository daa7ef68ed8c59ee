"""Flow-guided img2img video on diffusers, without the WebUI (``python -m lib_vidguide video``).

The same guidance as in the WebUI: :class:`~lib_vidguide.guidance.StepGuidance` wraps the
x0 denoiser, the same img2img schedule (t_enc + 1 sigmas) and the same guide builder.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .engine import FrameGuideInput, RenderedFrame
from .frame_guide import guidance_for_frame
from .guidance import SamplerConventions, StepGuidance
from .settings import VideoSettings

logger = logging.getLogger("vidguide")


@dataclass
class Img2ImgParams:
    prompt: str
    negative_prompt: str = ""
    steps: int = 20
    strength: float = 0.5
    cfg_scale: float = 7.0
    sampler: str = "euler"
    seed: int = 0

    def __post_init__(self):
        from .sampling import check_sampler

        check_sampler(self.sampler)
        if not (0.0 < self.strength <= 1.0):
            raise ValueError(f"denoising strength {self.strength} must be in (0, 1]")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")


def load_components(model: str, device: str = "cpu"):
    """A diffusers Stable Diffusion folder (or a hub id already in the local cache)."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()
    if not os.path.isdir(model) and os.path.sep in model:
        raise ValueError(f"model folder {model!r} does not exist; give a diffusers folder or a Hugging Face id")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"could not load a Stable Diffusion model from {model!r}: {error}. Give a local diffusers folder "
            "(with model_index.json), or a hub id that is already downloaded"
        ) from error
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.to(device).eval().requires_grad_(False)
    return pipe, torch.device(device)


class DiffusersImg2Img:
    """Tokenizer, text encoder, UNet and VAE of a Stable Diffusion 1.x model, img2img only."""

    def __init__(self, model: str, device: str = "cpu"):
        from .sampling import EpsDenoiser

        self.pipe, self.device = load_components(model, device)
        self.denoiser = EpsDenoiser(self.pipe.unet, self.pipe.scheduler.alphas_cumprod).to(self.device)
        self.scaling = float(self.pipe.vae.config.scaling_factor)
        self._prompt_cache: dict[tuple[str, str], tuple] = {}

    def encode_prompt(self, prompt: str, negative_prompt: str = ""):
        import torch

        key = (prompt, negative_prompt)
        if key not in self._prompt_cache:
            tokenizer = self.pipe.tokenizer
            ids = tokenizer([prompt, negative_prompt], padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids.to(self.device)
            with torch.no_grad():
                embeddings = self.pipe.text_encoder(ids)[0]
            self._prompt_cache[key] = (embeddings[:1], embeddings[1:])
        return self._prompt_cache[key]

    def encode_rgb(self, rgb: np.ndarray):
        """RGB uint8 to a scaled latent, deterministically (the posterior's mode)."""
        import torch

        image = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            return self.pipe.vae.encode(image.to(self.device)).latent_dist.mode() * self.scaling

    def decode(self, latent) -> np.ndarray:
        import torch

        with torch.no_grad():
            image = self.pipe.vae.decode(latent / self.scaling).sample
        image = ((image[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return image

    def img2img(self, init_rgb: np.ndarray, params: Img2ImgParams, guidance: Optional[StepGuidance] = None):
        """One frame: returns (RGB uint8, final latent)."""
        from .sampling import SAMPLERS, img2img_schedule, noise_like, sigmas_for

        height, width = init_rgb.shape[:2]
        if width % 8 or height % 8:
            raise ValueError(f"frame size {width}x{height} must be a multiple of 8; resize the video first")
        init_latent = self.encode_rgb(init_rgb)
        cond, uncond = self.encode_prompt(params.prompt, params.negative_prompt)
        sigmas = img2img_schedule(sigmas_for(params.sampler, self.denoiser, params.steps), params.strength).to(self.device)
        noise = noise_like(init_latent.shape, params.seed, self.device, init_latent.dtype)
        x = init_latent + noise * sigmas[0]
        model = self.denoiser
        if guidance is not None:
            guidance.conventions = guidance.conventions or SamplerConventions(sigma_to_t=self.denoiser.sigma_to_t)
            model = _GuidedModel(self.denoiser, guidance)
        latent = SAMPLERS[params.sampler](
            model, x, sigmas, extra_args={"cond": cond, "uncond": uncond, "cond_scale": params.cfg_scale}
        )
        return self.decode(latent), latent


class _GuidedModel:
    def __init__(self, denoiser, guidance: StepGuidance):
        self.denoiser = denoiser
        self.guidance = guidance

    def __call__(self, x, sigma, **kwargs):
        self.guidance.observe_input(x, sigma)
        return self.guidance.apply(self.denoiser(x, sigma, **kwargs))


class DiffusersFrameRenderer:
    """The engine's renderer on :class:`DiffusersImg2Img`; every frame uses the same seed."""

    def __init__(self, runner: DiffusersImg2Img, params: Img2ImgParams, settings: VideoSettings,
                 tagger_models_dir: Optional[str] = None):
        self.runner = runner
        self.params = params
        self.settings = settings
        self.tagger_models_dir = tagger_models_dir
        self.last_guidance: Optional[StepGuidance] = None

    def render(self, frame: np.ndarray, guide: Optional[FrameGuideInput], index: int) -> RenderedFrame:
        step_guidance = None
        if guide is not None:
            step_guidance = guidance_for_frame(self.settings, guide, encode=self.runner.encode_rgb,
                                               latent_hw=(frame.shape[0] // 8, frame.shape[1] // 8))
        params = self.params
        if self.settings.tagger.enabled:
            from dataclasses import replace

            from .tagger import prompt_for_frame

            params = replace(params, prompt=prompt_for_frame(params.prompt, frame, self.settings.tagger,
                                                             self.tagger_models_dir))
        image, latent = self.runner.img2img(frame, params, step_guidance)
        self.last_guidance = step_guidance
        return RenderedFrame(image, latent)


def run_video_file(source: str, output: str, *, model: str, params: Img2ImgParams, settings, device: str = "cpu",
                   runner: Optional[DiffusersImg2Img] = None, frames_dir=None, on_frame=None):
    from .engine import plan_frames, run_video

    plan_frames(source, settings)  # a bad input fails here, before the model loads
    runner = runner or DiffusersImg2Img(model, device)
    renderer = DiffusersFrameRenderer(runner, params, settings)
    return run_video(source, output, renderer, settings, frames_dir=frames_dir, on_frame=on_frame)


__all__ = ["DiffusersFrameRenderer", "DiffusersImg2Img", "Img2ImgParams", "run_video_file"]
