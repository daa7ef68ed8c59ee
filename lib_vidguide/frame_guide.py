"""Build one frame's guide (k0 and its weight map) from the previous output and the flow.

Host-independent: the VAE encoder is passed in as a function, so the WebUI (its
``sd_model``) and the standalone diffusers runner share this logic.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from .guidance import GuideTarget
from .settings import GuidanceSettings

if TYPE_CHECKING:
    import torch

    from .flow import FrameFlow

# RGB uint8 (H, W, 3) -> scaled latent (1, C, H/8, W/8), deterministically (posterior mode).
EncodeFn = Callable[[np.ndarray], "torch.Tensor"]


def motion_between(previous_rgb: np.ndarray, current_rgb: np.ndarray, settings: GuidanceSettings) -> "FrameFlow":
    """Flows and weight map between the previous and the current source frame (current grid)."""
    from .flow import FrameFlow, bidirectional_flow, weight_map

    if previous_rgb.shape != current_rgb.shape:
        raise ValueError(
            f"the previous source frame is {previous_rgb.shape[1]}x{previous_rgb.shape[0]} but the current one is "
            f"{current_rgb.shape[1]}x{current_rgb.shape[0]}; give both at the generation size"
        )
    pair = bidirectional_flow(previous_rgb, current_rgb, method=settings.flow_method)
    return FrameFlow(pair, weight_map(pair, mode=settings.weight_mode))


def warp_latent(latent: "torch.Tensor", backward_flow_px: np.ndarray) -> "torch.Tensor":
    """Warp (B, C, h, w) latents with a full-resolution backward flow, resized to the latent grid."""
    import torch

    from .flow import backward_warp, resize_flow

    height, width = latent.shape[-2:]
    flow = resize_flow(backward_flow_px, (height, width))
    warped = []
    for item in latent.detach().float().cpu():
        hwc = np.ascontiguousarray(item.permute(1, 2, 0).numpy())
        warped.append(torch.from_numpy(backward_warp(hwc, flow)).permute(2, 0, 1))
    return torch.stack(warped).to(latent)


def build_guide_target(
    settings: GuidanceSettings,
    *,
    encode: EncodeFn,
    latent_hw: tuple[int, int],
    guide_rgb: Optional[np.ndarray] = None,
    guide_latent: Optional["torch.Tensor"] = None,
    motion: Optional["FrameFlow"] = None,
) -> GuideTarget:
    """k0 = the guide moved onto the current frame; weights from the flow's reliability.

    Without motion the guide is used where it is (uniform weights): an AlwaysOn run
    given only a guide image. In latent mode a given ``guide_latent`` (the previous
    frame's final latent) avoids the VAE encode entirely.
    """
    import torch

    from .flow import backward_warp, resize_to_latent

    if guide_rgb is None and guide_latent is None:
        raise ValueError("a guide needs the previous output image or its latent")
    if settings.warp_space == "latent":
        base = guide_latent if guide_latent is not None else encode(guide_rgb)
        latent = warp_latent(base, motion.pair.backward) if motion is not None else base
    else:
        if guide_rgb is None:
            raise ValueError("pixel-space warping needs the previous output image, not only its latent")
        warped = backward_warp(guide_rgb, motion.pair.backward) if motion is not None else guide_rgb
        latent = encode(warped)
    if tuple(latent.shape[-2:]) != tuple(latent_hw):
        raise ValueError(
            f"guide latent is {tuple(latent.shape[-2:])} but the generation's latent is {tuple(latent_hw)}; "
            "give the guide at the generation size"
        )
    if motion is None:
        weight = torch.ones((1, 1, *latent_hw), dtype=torch.float32)
    else:
        weight = torch.from_numpy(np.ascontiguousarray(resize_to_latent(motion.weight, latent_hw), dtype=np.float32))
        weight = weight.clamp(0.0, 1.0).reshape(1, 1, *latent_hw)
    return GuideTarget(latent=latent.float(), weight_map=weight)


def guidance_for_frame(settings, guide, *, encode: EncodeFn, latent_hw: tuple[int, int]):
    """The StepGuidance of one video frame: toward the warped previous output, and with drift
    control also toward the first output warped from the first source frame.

    ``settings``: VideoSettings; ``guide``: engine.FrameGuideInput.
    """
    from .guidance import GuideTerm, StepGuidance

    guidance = settings.guidance
    target = build_guide_target(guidance, encode=encode, latent_hw=latent_hw, guide_rgb=guide.previous_output,
                                guide_latent=guide.previous_latent, motion=guide.motion)
    extra = []
    drift = settings.drift
    if drift.first_frame_guide and guide.first is not None and guide.motion.anchor is not None:
        anchor_target = build_guide_target(guidance, encode=encode, latent_hw=latent_hw, guide_rgb=guide.first.image,
                                           guide_latent=guide.first.latent, motion=guide.motion.anchor)
        extra.append(GuideTerm(anchor_target, drift.first_frame_schedule, drift.first_frame_strength))
    return StepGuidance(target, guidance.parsed_schedule(), guidance.strength, extra=extra)
