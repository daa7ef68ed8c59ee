"""img2img processing as modules/processing.py runs it, minus features the extension never sees.

Order inside process_images: before_process; seeds and prompts; process; p.init (which encodes
the init image by sampling the VAE posterior with the global RNG); job_count; per batch:
interrupt check, before_process_batch, process_batch, conds, sample (noise from per-seed RNG,
process_before_every_sampling), post_sample, full VAE decode, state.nextjob,
postprocess_batch, postprocess_image; Processed; postprocess. Nothing wraps the hooks in a
try/finally: an exception skips postprocess (HOST_A1111.md §3.4).

Forge mode (HOST_A1111.md §6.3): everything from p.init on runs under torch.inference_mode()
instead of no_grad, the uncond is None when cfg_scale == 1, and PostprocessImageArgs carries
the image's index.
"""

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from modules import devices, images, prompt_parser, rng, scripts, sd_samplers, sd_samplers_common, shared, standin_mode
from modules.shared import opts, state

opt_C = 4
opt_f = 8


def fix_seed(p):
    p.seed = int(random.randrange(4294967294)) if p.seed is None or p.seed == "" or p.seed == -1 else int(p.seed)
    p.subseed = int(random.randrange(4294967294)) if p.subseed is None or p.subseed == "" or p.subseed == -1 else int(p.subseed)


def get_fixed_seed(seed):
    if seed in (None, "", -1):
        return int(random.randrange(4294967294))
    return int(seed)


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Any = None

    def __post_init__(self):
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.s_min_uncond = self.s_min_uncond if self.s_min_uncond is not None else opts.s_min_uncond
        self.s_churn = self.s_churn if self.s_churn is not None else opts.s_churn
        self.s_tmin = self.s_tmin if self.s_tmin is not None else opts.s_tmin
        self.s_tmax = (self.s_tmax if self.s_tmax is not None else opts.s_tmax) or float("inf")
        self.s_noise = self.s_noise if self.s_noise is not None else opts.s_noise
        self.is_api = False
        self.is_hr_pass = False
        self.scripts_value = None
        self.script_args_value = None
        self.scripts_setup_complete = False
        self.sampler = None
        self.c = None
        self.uc = None
        self.rng = None
        self.iteration = 0
        self.all_prompts = None
        self.all_negative_prompts = None
        self.all_seeds = None
        self.all_subseeds = None
        self.prompts = None
        self.negative_prompts = None
        self.seeds = None
        self.subseeds = None
        self.user = None

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        pass

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def save_samples(self) -> bool:
        return opts.samples_save and not self.do_not_save_samples and (
            opts.save_incomplete_images or not state.interrupted and not state.skipped
        )

    def setup_prompts(self):
        self.all_prompts = self.batch_size * self.n_iter * [self.prompt]
        self.all_negative_prompts = self.batch_size * self.n_iter * [self.negative_prompt]

    def setup_conds(self):
        if standin_mode.FORGE and self.cfg_scale == 1:
            self.uc = None  # Forge: "Skipping unconditional conditioning when CFG = 1"
        else:
            self.uc = prompt_parser.get_learned_conditioning(self.sd_model, self.negative_prompts, self.steps)
        self.c = prompt_parser.get_multicond_learned_conditioning(self.sd_model, self.prompts, self.steps)

    def get_conds(self):
        return self.c, self.uc


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image.Image = None
    force_task_id: str = None

    def __post_init__(self):
        super().__post_init__()
        self.image_mask = self.mask
        self.mask = None
        self.nmask = None
        self.init_latent = None
        self.image_conditioning = None
        self.initial_noise_multiplier = (
            opts.initial_noise_multiplier if self.initial_noise_multiplier is None else self.initial_noise_multiplier
        )

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        if self.image_mask is not None:
            raise NotImplementedError("the stand-in host does not model inpainting")

        imgs = []
        for img in self.init_images:
            image = images.flatten(img, "#ffffff")
            image = images.resize_image(self.resize_mode, image, self.width, self.height)
            imgs.append(np.moveaxis(np.array(image).astype(np.float32) / 255.0, 2, 0))

        if len(imgs) == 1:
            batch_images = np.expand_dims(imgs[0], axis=0).repeat(self.batch_size, axis=0)
        elif len(imgs) <= self.batch_size:
            self.batch_size = len(imgs)
            batch_images = np.array(imgs)
        else:
            raise RuntimeError(f"bad number of images passed: {len(imgs)}; expecting {self.batch_size} or less")

        image = torch.from_numpy(batch_images).to(shared.device, dtype=devices.dtype_vae)
        self.init_latent = sd_samplers_common.images_tensor_to_samples(
            image, sd_samplers_common.approximation_indexes.get(opts.sd_vae_encode_method), self.sd_model
        )
        self.image_conditioning = torch.zeros(self.init_latent.shape[0], 5, 1, 1, device=shared.device)

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        x = self.rng.next()
        if self.initial_noise_multiplier != 1.0:
            x *= self.initial_noise_multiplier
        self.scripts.process_before_every_sampling(
            p=self, x=self.init_latent, noise=x, c=conditioning, uc=unconditional_conditioning
        )
        samples = self.sampler.sample_img2img(
            self, self.init_latent, x, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning
        )
        del x
        devices.torch_gc()
        return samples


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = comments
        self.width = p.width
        self.height = p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.denoising_strength = getattr(p, "denoising_strength", None)
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def js(self):
        import json

        return json.dumps({
            "prompt": self.prompt, "all_prompts": self.all_prompts, "seed": self.seed, "all_seeds": self.all_seeds,
            "width": self.width, "height": self.height, "sampler_name": self.sampler_name, "cfg_scale": self.cfg_scale,
            "steps": self.steps, "denoising_strength": self.denoising_strength,
            "extra_generation_params": self.extra_generation_params, "infotexts": self.infotexts,
        }, default=str)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0):
    index = position_in_batch + iteration * p.batch_size
    generation_params = {
        "Steps": p.steps, "Sampler": p.sampler_name, "CFG scale": p.cfg_scale, "Seed": all_seeds[index],
        "Size": f"{p.width}x{p.height}", "Denoising strength": p.denoising_strength,
    }
    generation_params.update(p.extra_generation_params)
    from modules.infotext_utils import quote

    text = ", ".join(f"{k}: {quote(v)}" for k, v in generation_params.items() if v is not None)
    return f"{all_prompts[index]}\nNegative prompt: {p.negative_prompt}\n{text}"


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    seed = get_fixed_seed(p.seed)
    subseed = get_fixed_seed(p.subseed)
    p.setup_prompts()
    p.all_seeds = [int(seed) + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [int(subseed) + x for x in range(len(p.all_prompts))]

    if p.scripts is not None:
        p.scripts.process(p)

    output_images = []
    infotexts = []
    with (torch.inference_mode() if standin_mode.FORGE else torch.no_grad()):
        p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
        if state.job_count == -1:
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            if state.skipped:
                state.skipped = False
            if state.interrupted or state.stopping_generation:
                break

            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.seeds = p.all_seeds[n * p.batch_size:(n + 1) * p.batch_size]
            p.subseeds = p.all_subseeds[n * p.batch_size:(n + 1) * p.batch_size]
            latent_shape = (opt_C, p.height // opt_f, p.width // opt_f)
            p.rng = rng.ImageRNG(latent_shape, p.seeds)

            if p.scripts is not None:
                p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)

            p.setup_conds()
            samples_ddim = p.sample(
                conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds,
                subseed_strength=p.subseed_strength, prompts=p.prompts,
            )

            if p.scripts is not None:
                ps = scripts.PostSampleArgs(samples_ddim)
                p.scripts.post_sample(p, ps)
                samples_ddim = ps.samples

            x_samples_ddim = torch.stack(
                [sd_samplers_common.samples_to_images_tensor(s.unsqueeze(0), 0, p.sd_model)[0] for s in samples_ddim]
            ).float()
            x_samples_ddim = torch.clamp((x_samples_ddim + 1.0) / 2.0, min=0.0, max=1.0)
            state.nextjob()

            if p.scripts is not None:
                p.scripts.postprocess_batch(p, x_samples_ddim, batch_number=n)

            for i, x_sample in enumerate(x_samples_ddim):
                p.batch_index = i
                x_sample = 255.0 * np.moveaxis(x_sample.cpu().numpy(), 0, 2)
                image = Image.fromarray(x_sample.astype(np.uint8))
                if p.scripts is not None:
                    pp = (scripts.PostprocessImageArgs(image, i + p.iteration * p.batch_size) if standin_mode.FORGE
                          else scripts.PostprocessImageArgs(image))
                    p.scripts.postprocess_image(p, pp)
                    image = pp.image
                text = create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, iteration=n, position_in_batch=i)
                infotexts.append(text)
                image.info["parameters"] = text
                output_images.append(image)

    res = Processed(
        p, output_images, p.all_seeds[0], infotexts[0] if infotexts else "", subseed=p.all_subseeds[0],
        infotexts=infotexts,
    )
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
