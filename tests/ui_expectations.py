"""What every VidGuide UI must contain, by elem_id, whatever the gradio version: the tables that
test_ui_build.py (no browser) and test_ui_browser.py (Debian's chromium) check the built pages
against, and the walk over a built gradio page that finds a UI's controls and accordions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

ALWAYSON_PREFIX = "script_img2img_vidguide_flow_guidance_"
VIDEO_SCRIPT_PREFIX = "script_img2img_vidguide_video_"

# elem_id -> the kind of component it must be: "input", "button" (enabled and visible in the browser)
# or "output" (visible); "accordion" for an accordion the controls after it sit in.
VIDEO_TAB = {
    "vidguide_video": "input", "vidguide_server_path": "input", "vidguide_name": "input",
    "vidguide_prompt": "input", "vidguide_negative_prompt": "input", "vidguide_sampler": "input",
    "vidguide_steps": "input", "vidguide_denoising_strength": "input", "vidguide_cfg_scale": "input",
    "vidguide_seed": "input", "vidguide_width": "input", "vidguide_height": "input",
    "vidguide_guidance": "accordion", "vidguide_guidance_enabled": "input", "vidguide_guidance_strength": "input",
    "vidguide_guidance_schedule": "input", "vidguide_guidance_weight_mode": "input",
    "vidguide_guidance_flow_method": "input", "vidguide_guidance_warp_space": "input",
    "vidguide_drift": "accordion", "vidguide_drift_first_frame_guide": "input",
    "vidguide_drift_first_frame_strength": "input", "vidguide_drift_first_frame_schedule": "input",
    "vidguide_drift_color_correction": "input", "vidguide_drift_second_pass": "input",
    "vidguide_drift_second_pass_strength": "input",
    "vidguide_tagger": "accordion", "vidguide_tagger_enabled": "input", "vidguide_tagger_model": "input",
    "vidguide_tagger_refresh": "button", "vidguide_tagger_general_threshold": "input",
    "vidguide_tagger_character_threshold": "input", "vidguide_tagger_exclude": "input",
    "vidguide_tagger_placement": "input",
    "vidguide_frames": "accordion", "vidguide_start_frame": "input", "vidguide_max_frames": "input",
    "vidguide_every_nth": "input", "vidguide_fps": "input", "vidguide_keep_audio": "input", "vidguide_crf": "input",
    "vidguide_generate": "button", "vidguide_interrupt": "button", "vidguide_skip": "button",
    "vidguide_result": "output", "vidguide_preview": "output", "vidguide_status": "output",
}
JOBS_TAB = {
    "vidguide_jobs_refresh": "button", "vidguide_jobs_table": "output", "vidguide_job_select": "input",
    "vidguide_job_resume": "button", "vidguide_job_interrupt": "button", "vidguide_job_delete": "button",
    "vidguide_job_details": "output", "vidguide_job_video": "output",
}
MOTION_BRUSH_TAB = {
    "vidguide_mb_image": "input", "vidguide_mb_mask_preview": "output", "vidguide_mb_notes": "output",
    "vidguide_mb_model": "input", "vidguide_mb_model_refresh": "button",
    "vidguide_mb_motion": "accordion", "vidguide_mb_frames": "input", "vidguide_mb_steps": "input",
    "vidguide_mb_fps": "input", "vidguide_mb_motion_bucket_id": "input", "vidguide_mb_noise_aug_strength": "input",
    "vidguide_mb_seed": "input", "vidguide_mb_min_guidance_scale": "input", "vidguide_mb_max_guidance_scale": "input",
    "vidguide_mb_brush": "accordion", "vidguide_mb_max_steps_to_replace": "input", "vidguide_mb_composite": "input",
    "vidguide_mb_feather_px": "input",
    "vidguide_mb_output": "accordion", "vidguide_mb_width": "input", "vidguide_mb_height": "input",
    "vidguide_mb_output_format": "input", "vidguide_mb_decode_chunk_size": "input", "vidguide_mb_cpu_offload": "input",
    "vidguide_mb_fp16": "input", "vidguide_mb_keep_loaded": "input",
    "vidguide_mb_run": "button", "vidguide_mb_interrupt": "button", "vidguide_mb_result_video": "output",
    "vidguide_mb_status": "output",
}
_GUIDANCE = ("strength", "schedule", "weight_mode", "flow_method", "warp_space")
ALWAYSON_SCRIPT = {
    ALWAYSON_PREFIX + "enabled": "accordion",  # the host's InputAccordion: the accordion is the "enabled" input
    **{ALWAYSON_PREFIX + name: "input" for name in ("guide_image", "previous_source", *_GUIDANCE)},
}
VIDEO_SCRIPT = {VIDEO_SCRIPT_PREFIX + name: "input" for name in (
    "video", "enabled", *_GUIDANCE, "start_frame", "max_frames", "every_nth", "fps")}

# The scripts' args, in the order the API takes them (the host slices script_args by position).
ALWAYSON_ARG_IDS = [ALWAYSON_PREFIX + name for name in (
    "enabled", "guide_image", "previous_source", *_GUIDANCE)]
VIDEO_ARG_IDS = [VIDEO_SCRIPT_PREFIX + name for name in (
    "video", "enabled", *_GUIDANCE, "start_frame", "max_frames", "every_nth", "fps")]

LAYOUT_TYPES = ("Row", "Column", "Group", "Tabs", "Tab", "TabItem", "Box", "Form", "Blocks")
INPUT_TYPES = ("Textbox", "Number", "Slider", "Dropdown", "Checkbox", "Radio", "Image", "Video", "ImageEditor",
               "File", "CheckboxGroup", "ColorPicker")


@dataclass
class Control:
    elem_id: str
    kind: str  # "input", "button", "output"
    accordions: tuple[str, ...]  # the accordions (elem_ids) it sits in, outermost first
    block: Any = field(repr=False, default=None)


def iter_blocks(block) -> Iterator[Any]:
    yield block
    for child in getattr(block, "children", None) or []:
        yield from iter_blocks(child)


def find_block(root, elem_id: str):
    for block in iter_blocks(root):
        if getattr(block, "elem_id", None) == elem_id:
            return block
    raise LookupError(f"no block with elem_id {elem_id!r}")


def _is_accordion(block) -> bool:
    return type(block).__name__ == "Accordion"


def _is_layout(block) -> bool:
    return any(cls.__name__ in LAYOUT_TYPES for cls in type(block).__mro__) and not _is_accordion(block)


def visible_controls(root, *, skip_tabs: bool = True) -> list[Control]:
    """Every component with an elem_id that the page shows under ``root`` once its accordions are
    open (nested sub-tabs skipped when ``skip_tabs``), with the accordions to open on the way."""
    found: list[Control] = []

    def walk(block, accordions: tuple[str, ...]):
        for child in getattr(block, "children", None) or []:
            if getattr(child, "visible", True) is False:
                continue
            name = type(child).__name__
            elem_id = getattr(child, "elem_id", None)
            if skip_tabs and name in ("Tab", "TabItem"):
                continue
            if _is_accordion(child):
                walk(child, (*accordions, elem_id) if elem_id else accordions)
                continue
            if _is_layout(child):
                walk(child, accordions)
                continue
            if not elem_id:
                continue
            if name == "Button":
                kind = "button"
            elif name in INPUT_TYPES or any(cls.__name__ in ("Image", "Video", "ImageEditor")
                                            for cls in type(child).__mro__):
                kind = "output" if getattr(child, "interactive", None) is False else "input"
            else:
                kind = "output"
            found.append(Control(elem_id, kind, accordions, child))

    walk(root, ())
    return found
