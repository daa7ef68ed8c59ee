"""The AlwaysOn img2img script "VidGuide flow guidance"."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from modules import scripts

from ..frame_guide import build_guide_target, motion_between
from ..guidance import StepGuidance
from ..settings import ALWAYSON_ARG_NAMES, INFOTEXT_LABELS, GuidanceSettings, args_to_mapping, guidance_from_values
from . import compat, hooks, host, ui, xyz

logger = host.configure_logging()

TITLE = "VidGuide flow guidance"


@dataclass
class GuidanceRequest:
    """One enabled AlwaysOn run, validated: settings plus the images at generation size."""

    settings: GuidanceSettings
    guide_rgb: np.ndarray
    previous_rgb: Optional[np.ndarray]
    current_rgb: Optional[np.ndarray]

    @classmethod
    def from_args(cls, p: Any, args: tuple) -> "GuidanceRequest | None":
        values = args_to_mapping(args, ALWAYSON_ARG_NAMES)
        settings = guidance_from_values({**values, **xyz.overrides(p)})
        if not settings.enabled:
            return None
        if compat.to_pil(values["guide_image"]) is None:
            raise ValueError("flow guidance is enabled but no guide image was given; add the previous output frame")
        guide = compat.rgb_for_generation(values["guide_image"], p)
        previous = current = None
        if compat.to_pil(values["previous_source"]) is not None:
            previous = compat.rgb_for_generation(values["previous_source"], p)
            if not getattr(p, "init_images", None):
                raise ValueError("a previous source frame needs an init image to compute the flow against")
            current = compat.rgb_for_generation(p.init_images[0], p)
        return cls(settings, guide, previous, current)

    def guidance_for(self, p: Any) -> StepGuidance:
        motion = motion_between(self.previous_rgb, self.current_rgb, self.settings) if self.previous_rgb is not None else None
        target = build_guide_target(
            self.settings,
            encode=lambda rgb: compat.encode_rgb(p.sd_model, rgb),
            latent_hw=(p.height // 8, p.width // 8),
            guide_rgb=self.guide_rgb,
            motion=motion,
        )
        return StepGuidance(target, self.settings.parsed_schedule(), self.settings.strength)


class VidGuideFlowScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return scripts.AlwaysVisible if is_img2img else False

    def ui(self, is_img2img):
        controls = ui.alwayson_controls(self.elem_id)
        by_name = dict(zip(ALWAYSON_ARG_NAMES, controls))
        # Paste / "send to img2img" restore every setting from the infotext, and switch the
        # script on only for images that were made with it.
        self.infotext_fields = [(by_name["enabled"], lambda params: INFOTEXT_LABELS["strength"] in params)]
        self.infotext_fields += [(by_name[name], label) for name, label in INFOTEXT_LABELS.items()]
        self.paste_field_names = list(INFOTEXT_LABELS.values())
        return controls

    def process(self, p, *args):
        # Callbacks leak when a generation fails before cleanup: drop any activation that is not
        # this very generation's (the "VidGuide video" script activates just before process_images).
        if hooks.active() is None or getattr(p, "_vg_guidance", None) is not hooks.active():
            hooks.deactivate()
        p._vg_request = None
        if getattr(p, "_vg_video_owned", False):
            return
        try:
            request = GuidanceRequest.from_args(p, args)
        except ValueError as error:
            logger.error("[-] VidGuide: %s. Flow guidance is off for this generation.", error)
            p.extra_generation_params["VidGuide error"] = str(error)[:200]
            return
        if request is None:
            return
        p._vg_request = request
        p.extra_generation_params.update(request.settings.infotext())

    def process_batch(self, p, *args, **kwargs):
        request = getattr(p, "_vg_request", None)
        if request is None:
            return
        try:
            hooks.activate(p, request.guidance_for(p))
        except ValueError as error:
            logger.error("[-] VidGuide: %s. Flow guidance is off for this batch.", error)

    def post_sample(self, p, ps, *args):
        if getattr(p, "_vg_capture_latent", False):
            # An ordinary tensor even under Forge's inference_mode: it outlives the generation.
            p._vg_last_latent = compat.ordinary_tensor(ps.samples.float().cpu())

    def postprocess_batch(self, p, *args, **kwargs):
        if getattr(p, "_vg_request", None) is not None:
            hooks.deactivate(getattr(p, "_vg_guidance", None))

    def postprocess(self, p, processed, *args):
        if getattr(p, "_vg_request", None) is not None:
            hooks.deactivate(getattr(p, "_vg_guidance", None))
