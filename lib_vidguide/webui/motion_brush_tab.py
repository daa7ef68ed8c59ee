"""The "Motion brush" sub-tab of VidGuide: paint where a still image may move, and SVD animates it.

The user uploads an image and paints over the parts that may move (gradio 3.41's sketch tool on
``gr.Image`` in A1111, gradio 4's ``ImageEditor`` in Forge: ``compat.brush_input``). A preview
beside it shows the image with the still parts dimmed, and notes say what will happen (nothing
painted: the whole image moves; a size that is not a multiple of 64: resized). Run works like
txt2img's Generate: javascript/vidguide.js puts a task id in the hidden first input and starts
the WebUI's progress bar, and the function is wrapped in the host's ``wrap_gradio_gpu_call``
(queue lock, ``shared.state``), so the run itself (``motion_brush_host.run_here``) only reports
its steps. Interrupt stops the run after the current sampling step; nothing is written then.

Controls are generated from :class:`~lib_vidguide.svd_motion_brush.MotionBrushSettings`, their
help texts from its field descriptions. Nothing runs at import.
"""

from __future__ import annotations

import html
import logging
from typing import Any, Optional

from ..svd_motion_brush import OUTPUT_FORMATS, MotionBrushInterrupted, MotionBrushSettings, output_size
from . import compat, motion_brush_host

logger = logging.getLogger("vidguide")

ELEM = "vidguide_mb"
# Run's inputs after the task id and the brush image, in order (the JS passes them through).
SETTINGS_INPUT_NAMES: tuple[str, ...] = (
    "model",
    "frames", "steps", "fps", "motion_bucket_id", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale",
    "seed", "max_steps_to_replace", "composite", "feather_px", "width", "height", "output_format",
    "decode_chunk_size", "cpu_offload", "fp16", "keep_loaded",
)
# Validation errors name the control the user sees.
LABELS: dict[str, str] = {
    "frames": "Frames", "steps": "Sampling steps", "fps": "FPS", "motion_bucket_id": "Motion amount (bucket id)",
    "noise_aug_strength": "Noise augmentation", "min_guidance_scale": "Min guidance", "max_guidance_scale":
    "Max guidance", "seed": "Seed", "max_steps_to_replace": "Hold still for the first K steps", "composite":
    "Paste frame 1 outside the paint", "feather_px": "Feather (px)", "width": "Width", "height": "Height",
    "output_format": "Format", "decode_chunk_size": "Decode chunk size", "cpu_offload": "CPU offload",
    "fp16": "Half precision (fp16)", "keep_loaded": "Keep the model loaded",
}
# The still (unpainted) part of the preview keeps this share of its brightness.
STILL_BRIGHTNESS = 0.3


class MotionBrushInputError(ValueError):
    """Something the user must fix in the sub-tab; the message says what and how."""


def message_html(kind: str, *lines: str) -> str:
    body = "".join(f"<p>{html.escape(str(line))}</p>" for line in lines if line)
    return f"<div class='vidguide-status vidguide-{kind}' data-status='{kind}'>{body}</div>"


def _description(name: str) -> Optional[str]:
    fields = MotionBrushSettings.model_fields if hasattr(MotionBrushSettings, "model_fields") \
        else MotionBrushSettings.__fields__
    field = fields[name]
    return field.field_info.description if hasattr(field, "field_info") else field.description


# --------------------------------------------------------------------------- values -> settings


def _optional_size(value: Any) -> Optional[int]:
    """0 or an empty field means "from the image"."""
    return None if value in (None, "") or float(value) == 0 else int(value)


def settings_from_values(values: dict[str, Any]) -> MotionBrushSettings:
    """The sub-tab's control values (by SETTINGS_INPUT_NAMES) as validated settings."""
    from pydantic import ValidationError

    data: dict[str, Any] = {}
    for name in SETTINGS_INPUT_NAMES:
        if name == "model" or name not in values:
            continue
        value = values[name]
        if name in ("width", "height"):
            value = _optional_size(value)
        elif name == "max_steps_to_replace":
            # -1 (or empty) = every step; the settings model says None for that.
            value = None if value in (None, "") or float(value) < 0 else int(value)
        elif name == "seed":
            value = -1 if value in (None, "") else int(value)
        elif value is None:
            continue  # an emptied number field: the default
        data[name] = value
    try:
        return MotionBrushSettings.from_dict(data)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            path = ".".join(str(part) for part in item.get("loc", ()) if part != "__root__")
            lines.append(f"{LABELS.get(path, path or 'settings')}: {item.get('msg', 'invalid value')}")
        raise MotionBrushInputError("; ".join(lines)) from error
    except (TypeError, ValueError) as error:
        raise MotionBrushInputError(str(error)) from error


# --------------------------------------------------------------------------- the preview


def _mask_values(image, mask):
    """The mask as float H x W in [0, 1] at the image's size, or None (nothing painted)."""
    from ..motion_brush import mask_is_painted, mask_to_array

    values = mask_to_array(mask, size=image.size) if mask is not None else None
    return values if mask_is_painted(values) else None


def mask_preview(value: Any, width: Any = 0, height: Any = 0) -> tuple[Any, str]:
    """(the image with its still part dimmed, notes HTML) for the brush input's value."""
    import numpy as np
    from PIL import Image

    image, mask = compat.brush_image_and_mask(value)
    if image is None:
        return None, message_html("info", "Upload an image, then paint over the parts that may move.")
    try:
        picture = compat.to_pil(image).convert("RGB")
        if picture.width == 0 or picture.height == 0:
            raise ValueError(f"The image is empty ({picture.width}x{picture.height} pixels): upload a real picture.")
        moving = _mask_values(picture, mask)
        target_w, target_h, size_notes = output_size(picture.width, picture.height,
                                                     _optional_size(width), _optional_size(height))
    except (ValueError, TypeError) as error:
        return None, message_html("error", str(error))
    notes = []
    if moving is None:
        notes.append("Nothing painted: the whole image moves (plain SVD). Paint over the parts that may move.")
        preview = picture
    else:
        share = float((moving > 0.5).mean())
        notes.append(f"Painted: {share:.0%} of the image may move; the dimmed part stays still.")
        weight = STILL_BRIGHTNESS + (1.0 - STILL_BRIGHTNESS) * moving[..., None]
        preview = Image.fromarray(np.clip(np.asarray(picture, np.float32) * weight, 0, 255).astype(np.uint8))
    if (target_w, target_h) != picture.size:
        notes.append(f"Resized from {picture.width}x{picture.height} to {target_w}x{target_h} "
                     "(SVD needs multiples of 64).")
    notes.extend(note for note in size_notes if "stretched" in note)
    if not motion_brush_host.model_choices():
        notes.append(f"No SVD model yet. {motion_brush_host.where_models_go()}")
    return preview, message_html("info", *notes)


# --------------------------------------------------------------------------- Run


def _result_outputs(run: motion_brush_host.MotionBrushRun) -> tuple[Any, Any, str]:
    """(video, animation, status): mp4 goes to the video player, gif and webp to an image (which
    shows them animated; a video player cannot); the one not used is hidden."""
    import gradio as gr

    is_mp4 = run.output_format == "mp4"
    video = gr.update(value=str(run.video_path) if is_mp4 else None, visible=is_mp4)
    animation = gr.update(value=None if is_mp4 else str(run.video_path), visible=not is_mp4)
    lines = [f"Done: {run.frames} frames at {run.width}x{run.height}, {run.fps} fps, seed {run.seed}.",
             *run.notes, f"Saved as {run.video_path}" + (f", frames in {run.frames_dir}" if run.frames_dir else "") + "."]
    return video, animation, message_html("done", *lines)


def run(id_task: str, brush_value: Any, *values) -> tuple[Any, Any, str]:
    """Run: check the inputs, animate here (the caller, wrap_gradio_gpu_call, holds the queue lock).
    A failed or interrupted run leaves the previous result on show."""
    import gradio as gr

    named = dict(zip(SETTINGS_INPUT_NAMES, values))
    image, mask = compat.brush_image_and_mask(brush_value)
    try:
        if image is None:
            raise MotionBrushInputError("No image: upload the still image to animate, then paint where it may move.")
        settings = settings_from_values(named)
        model = named.get("model")
        if not (model or "").strip() and not motion_brush_host.model_choices():
            raise MotionBrushInputError(f"No SVD model was found. {motion_brush_host.where_models_go()} "
                                        "Then press the refresh button next to Model.")
        result = motion_brush_host.run_here(compat.to_pil(image), mask, model=model, settings=settings)
    except MotionBrushInterrupted as interrupted:
        return gr.update(), gr.update(), message_html("interrupted", f"{interrupted} Run again when ready.")
    except ValueError as error:  # bad input (incl. MotionBrushInputError, UserInputError): the message says what
        return gr.update(), gr.update(), message_html("error", str(error) or type(error).__name__)
    except Exception as error:  # noqa: BLE001 - the log gets the traceback, the user a message
        logger.exception("[-] VidGuide: motion brush failed")
        return gr.update(), gr.update(), message_html("error", f"The motion brush failed: {type(error).__name__}: {error}. "
                                                 "See the console for details.")
    return _result_outputs(result)


def interrupt() -> None:
    motion_brush_host.interrupt()


def refresh_models(current: Optional[str]):
    import gradio as gr

    choices = motion_brush_host.model_choices()
    value = current if current in choices else (choices[0] if choices else None)
    return gr.update(choices=choices, value=value), models_note(choices)


def models_note(choices: list[str]) -> str:
    if choices:
        return ""
    return message_html("info", f"No SVD model yet. {motion_brush_host.where_models_go()}")


# --------------------------------------------------------------------------- the UI


def _settings_controls(controls: dict) -> None:
    import gradio as gr

    defaults = MotionBrushSettings()

    def number(name, label, **options):
        controls[name] = gr.Number(value=getattr(defaults, name), label=label, info=_description(name),
                                   elem_id=f"{ELEM}_{name}", **options)

    def slider(name, low, high, step, label):
        controls[name] = gr.Slider(low, high, value=getattr(defaults, name), step=step, label=label,
                                   info=_description(name), elem_id=f"{ELEM}_{name}")

    def checkbox(name, label):
        controls[name] = gr.Checkbox(value=getattr(defaults, name), label=label, info=_description(name),
                                     elem_id=f"{ELEM}_{name}")

    with gr.Accordion("Motion", open=True, elem_id=f"{ELEM}_motion"):
        with gr.Row():
            slider("frames", 2, 64, 1, LABELS["frames"])
            slider("steps", 1, 100, 1, LABELS["steps"])
        with gr.Row():
            slider("fps", 1, 60, 1, LABELS["fps"])
            slider("motion_bucket_id", 0, 1023, 1, LABELS["motion_bucket_id"])
        with gr.Row():
            slider("noise_aug_strength", 0.0, 1.0, 0.01, LABELS["noise_aug_strength"])
            number("seed", "Seed (-1 = random)", precision=0)
        with gr.Row():
            slider("min_guidance_scale", 0.0, 30.0, 0.1, LABELS["min_guidance_scale"])
            slider("max_guidance_scale", 0.0, 30.0, 0.1, LABELS["max_guidance_scale"])
    with gr.Accordion("Brush", open=False, elem_id=f"{ELEM}_brush"):
        with gr.Row():
            controls["max_steps_to_replace"] = gr.Number(
                value=-1, precision=0, label="Hold still for the first K steps (-1 = every step, 0 = off)",
                info=_description("max_steps_to_replace"), elem_id=f"{ELEM}_max_steps_to_replace")
            checkbox("composite", LABELS["composite"])
            slider("feather_px", 0, 256, 1, LABELS["feather_px"])
    with gr.Accordion("Size, output and memory", open=False, elem_id=f"{ELEM}_output"):
        with gr.Row():
            controls["width"] = gr.Number(value=0, precision=0, label="Width (0 = from the image)",
                                          info=_description("width"), elem_id=f"{ELEM}_width")
            controls["height"] = gr.Number(value=0, precision=0, label="Height (0 = from the image)",
                                           info=_description("height"), elem_id=f"{ELEM}_height")
            controls["output_format"] = gr.Radio(choices=list(OUTPUT_FORMATS), value=defaults.output_format,
                                                 label=LABELS["output_format"], elem_id=f"{ELEM}_output_format")
        with gr.Row():
            slider("decode_chunk_size", 1, 64, 1, LABELS["decode_chunk_size"])
            checkbox("cpu_offload", LABELS["cpu_offload"])
            checkbox("fp16", LABELS["fp16"])
            checkbox("keep_loaded", LABELS["keep_loaded"])


def build() -> None:
    """The sub-tab's contents and events; call inside its ``gr.TabItem`` (within the VidGuide Blocks)."""
    import gradio as gr

    choices = motion_brush_host.model_choices()
    controls: dict[str, Any] = {}
    # Filled by javascript/vidguide.js with the task id the progress bar follows.
    id_task = gr.Textbox(visible=False, elem_id=f"{ELEM}_id_task")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_id=f"{ELEM}_settings"):
            with gr.Row():
                brush = compat.brush_input("Image: paint over the parts that may move", f"{ELEM}_image")
                preview = gr.Image(label="Mask preview (the dimmed part stays still)", type="pil", interactive=False,
                                   elem_id=f"{ELEM}_mask_preview", height=360)
            notes = gr.HTML(models_note(choices), elem_id=f"{ELEM}_notes")
            with gr.Row(equal_height=False):
                controls["model"] = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                                label="SVD model", elem_id=f"{ELEM}_model", scale=4,
                                                info=f"A folder in {motion_brush_host.svd_models_dir()}")
                refresh = gr.Button("Refresh models", elem_id=f"{ELEM}_model_refresh", size="sm", scale=1,
                                    min_width=120)
            _settings_controls(controls)
        with gr.Column(scale=2, elem_id=f"{ELEM}_output_panel"):
            with gr.Row():
                run_button = gr.Button("Run", variant="primary", elem_id=f"{ELEM}_run")
                interrupt_button = gr.Button("Interrupt", elem_id=f"{ELEM}_interrupt")
            gr.Markdown("**Interrupt** stops after the current sampling step; nothing is written.",
                        elem_id=f"{ELEM}_buttons_help")
            # The progress bar goes above this column.
            with gr.Column(elem_id=f"{ELEM}_results"):
                video = gr.Video(label="Result", interactive=False, elem_id=f"{ELEM}_result_video")
                # gif and webp: a video player cannot show them, an image shows them animated.
                animation = gr.Image(label="Result (gif / webp)", type="filepath", interactive=False,
                                     elem_id=f"{ELEM}_result_animation", visible=False)
            status = gr.HTML(elem_id=f"{ELEM}_status")

    run_button.click(
        fn=compat.gpu_call(run, extra_outputs=[gr.update(), gr.update()]),
        inputs=[id_task, brush] + [controls[name] for name in SETTINGS_INPUT_NAMES],
        outputs=[video, animation, status],
        **compat.event_options(js="vidguideMotionBrushSubmit", show_progress=False),
    )
    # Interrupt must not wait behind the running job in gradio's queue; quick reads neither.
    quick = compat.event_options(show_progress=False, queue=False)
    interrupt_button.click(fn=interrupt, inputs=[], outputs=[], **quick)
    refresh.click(fn=refresh_models, inputs=[controls["model"]], outputs=[controls["model"], notes], **quick)
    preview_inputs = [brush, controls["width"], controls["height"]]
    for listener in [*compat.brush_edited_listeners(brush), controls["width"].change, controls["height"].change]:
        listener(fn=mask_preview, inputs=preview_inputs, outputs=[preview, notes], **quick)


__all__ = ["SETTINGS_INPUT_NAMES", "build", "mask_preview", "run", "settings_from_values"]
