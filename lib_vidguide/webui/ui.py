"""Gradio controls, built from the settings models so UI, API and infotext agree."""

from __future__ import annotations

from typing import Any

from ..schedules import PRESETS
from ..settings import ALWAYSON_ARG_NAMES, FLOW_METHODS, WARP_SPACES, WEIGHT_MODES, GuidanceSettings, VideoSettings
from . import compat


def guidance_controls(elem_id, defaults: GuidanceSettings) -> dict[str, Any]:
    """Strength, schedule, weight mode, flow method and warp space controls (no side effects)."""
    import gradio as gr

    described = {name: field.field_info.description if hasattr(field, "field_info") else field.description
                 for name, field in _fields(GuidanceSettings).items()}
    with gr.Row():
        strength = gr.Slider(0.0, 1.0, value=defaults.strength, step=0.01, label="Guidance strength",
                             info=described["strength"], elem_id=elem_id("strength"))
        schedule = gr.Dropdown(choices=list(PRESETS), value=defaults.schedule, label="Schedule",
                               allow_custom_value=True, info=described["schedule"], elem_id=elem_id("schedule"))
    with gr.Row():
        weight_mode = gr.Dropdown(choices=list(WEIGHT_MODES), value=defaults.weight_mode, label="Weight map",
                                  elem_id=elem_id("weight_mode"))
        flow_method = gr.Dropdown(choices=list(FLOW_METHODS), value=defaults.flow_method, label="Optical flow",
                                  elem_id=elem_id("flow_method"))
        warp_space = gr.Radio(choices=list(WARP_SPACES), value=defaults.warp_space, label="Warp in",
                              elem_id=elem_id("warp_space"))
    return {"strength": strength, "schedule": schedule, "weight_mode": weight_mode,
            "flow_method": flow_method, "warp_space": warp_space}


def _fields(model) -> dict:
    return model.model_fields if hasattr(model, "model_fields") else model.__fields__


def alwayson_controls(elem_id) -> list:
    """The AlwaysOn script's controls, in ALWAYSON_ARG_NAMES order."""
    import gradio as gr

    defaults = GuidanceSettings()
    accordion, enabled = compat.enable_accordion("VidGuide flow guidance", elem_id("enabled"))
    with accordion:
        if enabled is None:
            enabled = gr.Checkbox(value=False, label="Enable", elem_id=elem_id("enabled_checkbox"))
        gr.Markdown(
            "Guides every sampler step toward the **guide image** (the previous stylized frame). "
            "With the **previous source frame** it is warped by the optical flow from that frame to the "
            "init image, and weighted down where the flow is unreliable."
        )
        with gr.Row():
            guide_image = compat.image_input("Guide (previous output)", elem_id("guide_image"))
            previous_source = compat.image_input("Previous source frame (optional)", elem_id("previous_source"))
        controls = guidance_controls(elem_id, defaults)
    by_name = {"enabled": enabled, "guide_image": guide_image, "previous_source": previous_source, **controls}
    return [by_name[name] for name in ALWAYSON_ARG_NAMES]


VIDEO_ARG_NAMES: tuple[str, ...] = (
    "video",
    "enabled",
    "strength",
    "schedule",
    "weight_mode",
    "flow_method",
    "warp_space",
    "start_frame",
    "max_frames",
    "every_nth",
    "fps",
)


def video_controls(elem_id) -> list:
    """The selectable "VidGuide video" script's controls, in VIDEO_ARG_NAMES order."""
    import gradio as gr

    defaults = VideoSettings()
    video = compat.video_input("Source video", elem_id("video"))
    enabled = gr.Checkbox(value=defaults.guidance.enabled, label="Flow guidance (off = plain per-frame img2img)",
                          elem_id=elem_id("enabled"))
    controls = guidance_controls(elem_id, defaults.guidance)
    with gr.Row():
        start_frame = gr.Number(value=defaults.start_frame, precision=0, label="Start frame", elem_id=elem_id("start_frame"))
        max_frames = gr.Number(value=defaults.max_frames, precision=0, label="Max frames (0 = all)",
                               elem_id=elem_id("max_frames"))
        every_nth = gr.Number(value=defaults.every_nth, precision=0, label="Every n-th frame", elem_id=elem_id("every_nth"))
        fps = gr.Number(value=0, label="Output fps (0 = source)", elem_id=elem_id("fps"))
    by_name = {"video": video, "enabled": enabled, **controls, "start_frame": start_frame, "max_frames": max_frames,
               "every_nth": every_nth, "fps": fps}
    return [by_name[name] for name in VIDEO_ARG_NAMES]
