"""The "Edit" sub-tab of VidGuide: edit a video with new prompts (Tune-A-Video, Motion Inversion,
AttentionFlow).

* **Tune-A-Video**: *Train* fine-tunes an SD 1.x model on the video and its prompt (the weights are
  a trained artefact); *Edit* inverts the video and samples the edit prompt(s) with them.
* **Motion Inversion**: *Train* learns motion embeddings on a text-to-video model; *Generate*
  makes videos of new prompts with that motion.
* **AttentionFlow**: zero-shot, no training: *Edit* with a source prompt and edit prompt(s).

Train, Resume training and Edit work like txt2img's Generate: javascript/vidguide.js puts a task
id in the hidden first input and starts the WebUI's progress bar, and the functions are wrapped in
the host's ``wrap_gradio_gpu_call`` (queue lock, ``shared.state``). Interrupt stops after the
current step: a training keeps its newest checkpoint (Resume training continues it), an edit
writes nothing. Settings are validated by the pipelines' own models; a value of 0 (or -1 where 0
is meaningful) takes the method's default. Nothing runs at import.
"""

from __future__ import annotations

import html
import logging
from pathlib import Path
from typing import Any, Optional

from ..paths import PathNotAllowedError
from . import compat, edit_host, host

logger = logging.getLogger("vidguide")

ELEM = "vidguide_ed"
METHOD_CHOICES = [edit_host.METHOD_LABELS[method] for method in edit_host.METHODS]
_METHOD_BY_LABEL = {label: method for method, label in edit_host.METHOD_LABELS.items()}
# The inputs of Train, Resume training and Edit after the task id, in order (the JS passes them through).
INPUT_NAMES: tuple[str, ...] = (
    "method", "video", "server_path", "name", "source_prompt", "edit_prompts", "negative_prompt", "sd_model",
    "t2v_model", "artefact", "frames", "width", "height", "sample_stride", "train_steps", "learning_rate",
    "train_seed", "checkpoint_every", "edit_steps", "guidance_scale", "inversion_steps", "edit_seed",
)
# Validation errors name the control the user sees.
LABELS: dict[str, str] = {
    "frames": "Frames", "width": "Width", "height": "Height", "sample_stride": "Every n-th frame",
    "sample_start": "Start frame", "max_train_steps": "Training steps", "learning_rate": "Learning rate",
    "seed": "Seed", "checkpointing_steps": "Checkpoint every N steps", "num_inference_steps": "Sampling steps",
    "guidance_scale": "CFG scale", "inversion_steps": "Inversion steps", "negative_prompt": "Negative prompt",
}


class EditInputError(ValueError):
    """Something the user must fix in the sub-tab; the message says what and how."""


def message_html(kind: str, *lines: str) -> str:
    body = "".join(f"<p>{html.escape(str(line))}</p>" for line in lines if line)
    return f"<div class='vidguide-status vidguide-{kind}' data-status='{kind}'>{body}</div>"


def method_of(label: Any) -> str:
    method = _METHOD_BY_LABEL.get(label, label)
    if method not in edit_host.METHODS:
        raise EditInputError(f"Choose a method: {', '.join(METHOD_CHOICES)}.")
    return method


# --------------------------------------------------------------------------- values -> settings


def _positive(value: Any) -> Optional[float]:
    """0, negative or empty = the method's default (None)."""
    return None if value in (None, "") or float(value) <= 0 else float(value)


def _non_negative(value: Any) -> Optional[float]:
    """-1 or empty = the method's default (None); 0 is a real value."""
    return None if value in (None, "") or float(value) < 0 else float(value)


def _validated(model, data: dict):
    from pydantic import ValidationError

    try:
        return model.from_dict(data)
    except ValidationError as error:
        lines = []
        for item in error.errors():
            path = ".".join(str(part) for part in item.get("loc", ()) if part != "__root__")
            lines.append(f"{LABELS.get(path, path or 'settings')}: {item.get('msg', 'invalid value')}")
        raise EditInputError("; ".join(lines)) from error
    except (TypeError, ValueError) as error:
        raise EditInputError(str(error)) from error


def _clip_values(values: dict[str, Any], data: dict) -> None:
    for name in ("frames", "width", "height", "sample_stride"):
        value = _positive(values.get(name))
        if value is not None:
            data[name] = int(value)


def train_settings_from_values(method: str, values: dict[str, Any]):
    """The training settings (Tune-A-Video or Motion Inversion) from the sub-tab's controls."""
    data: dict[str, Any] = {}
    _clip_values(values, data)
    if _positive(values.get("train_steps")) is not None:
        data["max_train_steps"] = int(values["train_steps"])
    if _positive(values.get("learning_rate")) is not None:
        data["learning_rate"] = float(values["learning_rate"])
    if _non_negative(values.get("train_seed")) is not None:
        data["seed"] = int(values["train_seed"])
    if _non_negative(values.get("checkpoint_every")) is not None:
        data["checkpointing_steps"] = int(values["checkpoint_every"])
    if method == edit_host.MOTION_INVERSION and _non_negative(values.get("inversion_steps")) is not None:
        data["inversion_steps"] = int(values["inversion_steps"])  # stored for the noise prior of generation
    model = {edit_host.TUNE_A_VIDEO: edit_host.TuneAVideoSettings,
             edit_host.MOTION_INVERSION: edit_host.MotionInversionSettings}[method]
    return _validated(model, data)


def edit_settings_from_values(method: str, values: dict[str, Any]):
    """The edit (or generation) settings of ``method`` from the sub-tab's controls."""
    data: dict[str, Any] = {}
    _clip_values(values, data)
    if method == edit_host.MOTION_INVERSION:
        data.pop("sample_stride", None)  # generation has no source video
    if _positive(values.get("edit_steps")) is not None:
        data["num_inference_steps"] = int(values["edit_steps"])
    if _non_negative(values.get("guidance_scale")) is not None:
        data["guidance_scale"] = float(values["guidance_scale"])
    if (values.get("negative_prompt") or "").strip():
        data["negative_prompt"] = values["negative_prompt"].strip()
    if method != edit_host.ATTENTION_FLOW and _non_negative(values.get("edit_seed")) is not None:
        data["seed"] = int(values["edit_seed"])
    if method == edit_host.TUNE_A_VIDEO and _non_negative(values.get("inversion_steps")) is not None:
        data["inversion_steps"] = int(values["inversion_steps"])
    model = {edit_host.TUNE_A_VIDEO: edit_host.TuneAVideoEditSettings,
             edit_host.MOTION_INVERSION: edit_host.MotionInversionGenerateSettings,
             edit_host.ATTENTION_FLOW: edit_host.AttentionFlowSettings}[method]
    return _validated(model, data)


def source_from_values(upload: Any, server_path: Any, *, required: bool) -> tuple[Optional[Path], bool]:
    """(video path, is an upload) from the upload or the server path; (None, False) when neither and not required."""
    if isinstance(upload, dict):  # gradio's file data, should a host hand it over undecoded
        upload = upload.get("name") or upload.get("path")
    server_path = (server_path or "").strip() if isinstance(server_path, str) else ""
    if upload and server_path:
        raise EditInputError("Give either an uploaded video or a server path, not both: clear one of them.")
    if upload:
        return Path(str(upload)), True
    if not server_path:
        if required:
            raise EditInputError("No source video: upload one, or type the path of a video on the server.")
        return None, False
    try:
        return edit_host.server_video(server_path), False
    except PathNotAllowedError as error:
        roots = ", ".join(str(root) for root in host.allowed_roots()) or "(none)"
        raise EditInputError(
            f"The path {server_path!r} is outside the folders VidGuide may read ({roots}). Move the video into one of "
            "them, upload it instead, or start the WebUI with --vidguide-allowed-roots naming its folder.") from error


def artefact_id_of(choice: Any) -> str:
    """The artefact id at the start of a dropdown label ("<id> · name · method · status")."""
    text = str(choice or "").strip()
    match = edit_host.ARTEFACT_ID.match(text)
    return match.group(0) if match else ""


# --------------------------------------------------------------------------- the artefact list


def artefact_choices() -> list[str]:
    return [f"{record.artefact_id} · " + (f"{record.name} · " if record.name else "")
            + f"{edit_host.METHOD_LABELS[record.method]} · {edit_host.effective_status(record)}"
            for record in edit_host.list_records()]


def refresh_artefacts(current: Any = None, select_id: str = ""):
    import gradio as gr

    choices = artefact_choices()
    wanted = select_id or artefact_id_of(current)
    value = next((choice for choice in choices if wanted and choice.startswith(wanted)), None)
    return gr.update(choices=choices, value=value)


def refresh_models(sd_current: Any, t2v_current: Any):
    import gradio as gr

    sd, t2v = edit_host.sd_model_choices(), edit_host.t2v_model_choices()
    return (gr.update(choices=[""] + sd, value=sd_current if sd_current in sd else ""),
            gr.update(choices=t2v, value=t2v_current if t2v_current in t2v else (t2v[0] if t2v else None)))


def method_changed(label: Any):
    """Show what the chosen method uses: its base model, and training only for the trainable ones."""
    import gradio as gr

    method = _METHOD_BY_LABEL.get(label, edit_host.TUNE_A_VIDEO)
    trainable = method in edit_host.TRAINABLE_METHODS
    return (gr.update(visible=method != edit_host.MOTION_INVERSION),  # SD base model
            gr.update(visible=method == edit_host.MOTION_INVERSION),  # text-to-video model
            gr.update(visible=trainable),  # training settings
            gr.update(visible=trainable),  # Train
            gr.update(visible=trainable),  # Resume training
            gr.update(value="Generate" if method == edit_host.MOTION_INVERSION else "Edit"))


# --------------------------------------------------------------------------- Train, Resume, Edit


def _training_outcome(record: edit_host.TrainingRecord) -> str:
    if record.status == "done":
        loss = f", last loss {record.last_loss:.4f}" if record.last_loss is not None else ""
        return message_html("done", f"Trained {record.artefact_id}: {record.steps_done} steps{loss}.", *record.notes,
                            "It is selected under Trained artefact: write the edit prompt(s) and press "
                            + ("Generate." if record.method == edit_host.MOTION_INVERSION else "Edit."))
    return message_html("interrupted", f"Training {record.artefact_id} interrupted after step {record.steps_done} of "
                        f"{record.total_steps}; its checkpoint is kept. Select it and press Resume training to go on.")


def _guarded(action, outputs_on_error: int):
    """Run ``action()``; bad input or a failure becomes an error message (no traceback), the other outputs unchanged."""
    import gradio as gr

    keep = [gr.update() for _ in range(outputs_on_error)]
    try:
        return action()
    except edit_host.EditInterrupted as interrupted:
        return (*keep, message_html("interrupted", f"{interrupted} Run it again when ready."))
    except ValueError as error:  # bad input (EditInputError, UserInputError, pydantic, video errors)
        return (*keep, message_html("error", " ".join(str(error).split()) or type(error).__name__))
    except Exception as error:  # noqa: BLE001 - the log gets the traceback, the user a message
        logger.exception("[-] VidGuide: edit failed")
        return (*keep, message_html("error", f"Failed: {type(error).__name__}: {error}. See the console for details."))


def train(id_task: str, *values):
    """Train: check the inputs, make the artefact, train it here (the caller holds the queue lock)."""
    named = dict(zip(INPUT_NAMES, values))

    def action():
        method = method_of(named.get("method"))
        if method not in edit_host.TRAINABLE_METHODS:
            raise EditInputError("AttentionFlow needs no training: write the prompts and press Edit.")
        settings = train_settings_from_values(method, named)
        source, uploaded = source_from_values(named.get("video"), named.get("server_path"), required=True)
        model = named.get("sd_model") if method == edit_host.TUNE_A_VIDEO else named.get("t2v_model")
        record = edit_host.create_training(method, source, named.get("source_prompt") or "", model or "", settings,
                                           copy_source=uploaded, name=named.get("name") or "",
                                           shown_as="the uploaded video" if uploaded else None)
        try:
            record = edit_host.train_here(record.artefact_id)
        except ValueError:
            raise
        except Exception:  # noqa: BLE001 - recorded as failed; the list shows it
            return refresh_artefacts(select_id=record.artefact_id), message_html(
                "error", f"Training {record.artefact_id} failed: {edit_host.get_record(record.artefact_id).error}. "
                "See the console for details.")
        return refresh_artefacts(select_id=record.artefact_id), _training_outcome(record)

    return _guarded(action, 1)


def resume(id_task: str, *values):
    """Resume training: continue the selected artefact from its newest checkpoint."""
    named = dict(zip(INPUT_NAMES, values))

    def action():
        artefact_id = artefact_id_of(named.get("artefact"))
        if not artefact_id:
            raise EditInputError("Select the interrupted training under Trained artefact first.")
        if edit_host.is_active(artefact_id):
            raise EditInputError(f"{artefact_id} is already training.")
        record = edit_host.train_here(artefact_id)
        return refresh_artefacts(select_id=artefact_id), _training_outcome(record)

    return _guarded(action, 1)


def edit(id_task: str, *values):
    """Edit (Generate for Motion Inversion): run here and show the first video."""
    named = dict(zip(INPUT_NAMES, values))

    def action():
        method = method_of(named.get("method"))
        settings = edit_settings_from_values(method, named)
        artefact_id = artefact_id_of(named.get("artefact"))
        if method in edit_host.TRAINABLE_METHODS and not artefact_id:
            raise EditInputError(f"Select a trained {edit_host.METHOD_LABELS[method]} artefact under Trained artefact "
                                 "(train one first).")
        if method == edit_host.ATTENTION_FLOW:
            artefact_id = ""  # zero-shot here (the API accepts Tune-A-Video weights)
        video, uploaded = (None, False) if method == edit_host.MOTION_INVERSION else source_from_values(
            named.get("video"), named.get("server_path"), required=method == edit_host.ATTENTION_FLOW)
        model = named.get("t2v_model") if method == edit_host.MOTION_INVERSION else named.get("sd_model")
        if method != edit_host.ATTENTION_FLOW:
            model = ""  # as trained: the weights belong to their base model
        run = edit_host.edit_here(method, prompts=named.get("edit_prompts") or "", settings=settings, video=video,
                                  source_prompt=named.get("source_prompt") or "", artefact_id=artefact_id,
                                  model=model or "", video_shown_as="the uploaded video" if uploaded else None)
        lines = [f"Done: {len(run.videos)} video(s), {run.frames} frames at {run.width}x{run.height}, {run.fps:g} fps.",
                 *run.notes, "Saved as " + ", ".join(str(path) for path in run.videos) + "."]
        return str(run.videos[0]), message_html("done", *lines)

    return _guarded(action, 1)


def interrupt() -> None:
    edit_host.interrupt()


# --------------------------------------------------------------------------- the UI


def _number(name: str, value, label: str, controls: dict, info: Optional[str] = None, precision: Optional[int] = 0):
    import gradio as gr

    controls[name] = gr.Number(value=value, precision=precision, label=label, info=info, elem_id=f"{ELEM}_{name}")


def build() -> None:
    """The sub-tab's contents and events; call inside its ``gr.TabItem`` (within the VidGuide Blocks)."""
    import gradio as gr

    controls: dict[str, Any] = {}
    sd_choices, t2v_choices = edit_host.sd_model_choices(), edit_host.t2v_model_choices()
    roots = ", ".join(str(root) for root in host.allowed_roots())
    # Filled by javascript/vidguide.js with the task id the progress bar follows.
    id_task = gr.Textbox(visible=False, elem_id=f"{ELEM}_id_task")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, elem_id=f"{ELEM}_settings"):
            controls["method"] = gr.Radio(choices=METHOD_CHOICES, value=METHOD_CHOICES[0], label="Method",
                                          elem_id=f"{ELEM}_method",
                                          info="Tune-A-Video and Motion Inversion train first; AttentionFlow edits "
                                               "zero-shot.")
            with gr.Row():
                controls["video"] = compat.video_input("Source video (upload)", f"{ELEM}_video")
                with gr.Column():
                    controls["server_path"] = gr.Textbox(label="…or a video on the server", placeholder="/path/to/video.mp4",
                                                         info=f"Inside: {roots}", elem_id=f"{ELEM}_server_path")
                    controls["name"] = gr.Textbox(label="Name of the trained artefact (optional)",
                                                  elem_id=f"{ELEM}_name")
            controls["source_prompt"] = gr.Textbox(label="Source prompt: what the video shows", lines=2,
                                                   placeholder="a man is skiing", elem_id=f"{ELEM}_source_prompt",
                                                   info="Tune-A-Video and Motion Inversion train on it; "
                                                        "AttentionFlow edits from it.")
            controls["edit_prompts"] = gr.Textbox(label="Edit prompt(s), one per line (one video each)", lines=3,
                                                  placeholder="a panda is skiing", elem_id=f"{ELEM}_edit_prompts")
            controls["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{ELEM}_negative_prompt")
            with gr.Row(equal_height=False):
                controls["sd_model"] = gr.Dropdown(
                    choices=[""] + sd_choices, value="", label="Base model (SD 1.x; empty = the WebUI's checkpoint)",
                    elem_id=f"{ELEM}_sd_model", scale=4, info=f"A checkpoint or diffusers folder in "
                    f"{host.models_path() / edit_host.SD_MODELS_SUBDIR}")
                controls["t2v_model"] = gr.Dropdown(
                    choices=t2v_choices, value=t2v_choices[0] if t2v_choices else None, visible=False,
                    label="Text-to-video model", elem_id=f"{ELEM}_t2v_model", scale=4,
                    info=f"A diffusers folder in {host.models_path() / edit_host.T2V_MODELS_SUBDIR}")
                models_refresh = gr.Button("Refresh models", elem_id=f"{ELEM}_models_refresh", size="sm", scale=1,
                                           min_width=120)
            with gr.Row():
                _number("frames", 0, "Frames (0 = default)", controls)
                _number("width", 0, "Width (0 = default)", controls)
                _number("height", 0, "Height (0 = default)", controls)
                _number("sample_stride", 0, "Every n-th frame (0 = default)", controls)
            with gr.Accordion("Training", open=True, elem_id=f"{ELEM}_training") as training:
                with gr.Row():
                    _number("train_steps", 0, "Training steps (0 = default)", controls)
                    _number("learning_rate", 0, "Learning rate (0 = default)", controls, precision=None)
                    _number("train_seed", -1, "Training seed (-1 = default)", controls)
                    _number("checkpoint_every", 100, "Checkpoint every N steps", controls,
                            info="0 = only when interrupted; an interrupted training resumes from its newest one.")
            with gr.Accordion("Edit", open=True, elem_id=f"{ELEM}_edit_settings"):
                with gr.Row():
                    _number("edit_steps", 0, "Sampling steps (0 = default)", controls)
                    _number("guidance_scale", -1, "CFG scale (-1 = default)", controls, precision=None)
                    _number("inversion_steps", -1, "Inversion steps (-1 = default)", controls,
                            info="DDIM inversion of the video (Tune-A-Video edit; Motion Inversion's noise prior).")
                    _number("edit_seed", -1, "Seed (-1 = default)", controls)
        with gr.Column(scale=2, elem_id=f"{ELEM}_output_panel"):
            with gr.Row(equal_height=False):
                controls["artefact"] = gr.Dropdown(choices=artefact_choices(), value=None, label="Trained artefact",
                                                   elem_id=f"{ELEM}_artefact", scale=4)
                artefacts_refresh = gr.Button("Refresh", elem_id=f"{ELEM}_artefact_refresh", size="sm", scale=1,
                                              min_width=80)
            with gr.Row():
                train_button = gr.Button("Train", variant="primary", elem_id=f"{ELEM}_train")
                resume_button = gr.Button("Resume training", elem_id=f"{ELEM}_resume")
                edit_button = gr.Button("Edit", variant="primary", elem_id=f"{ELEM}_edit")
                interrupt_button = gr.Button("Interrupt", elem_id=f"{ELEM}_interrupt")
            gr.Markdown("**Interrupt** stops after the current step: a training keeps its checkpoint (**Resume "
                        "training** continues it), an edit writes nothing.", elem_id=f"{ELEM}_buttons_help")
            # The progress bar goes above this column.
            with gr.Column(elem_id=f"{ELEM}_results"):
                video = gr.Video(label="Result (the first prompt's video)", interactive=False,
                                 elem_id=f"{ELEM}_result_video")
            status = gr.HTML(elem_id=f"{ELEM}_status")

    inputs = [id_task] + [controls[name] for name in INPUT_NAMES]
    for button, function, output in ((train_button, train, controls["artefact"]),
                                     (resume_button, resume, controls["artefact"]), (edit_button, edit, video)):
        button.click(fn=compat.gpu_call(function, extra_outputs=[gr.update()]), inputs=inputs, outputs=[output, status],
                     **compat.event_options(js="vidguideEditSubmit", show_progress=False))
    # Interrupt must not wait behind the running job in gradio's queue; quick reads neither.
    quick = compat.event_options(show_progress=False, queue=False)
    interrupt_button.click(fn=interrupt, inputs=[], outputs=[], **quick)
    artefacts_refresh.click(fn=refresh_artefacts, inputs=[controls["artefact"]], outputs=[controls["artefact"]], **quick)
    models_refresh.click(fn=refresh_models, inputs=[controls["sd_model"], controls["t2v_model"]],
                         outputs=[controls["sd_model"], controls["t2v_model"]], **quick)
    controls["method"].change(fn=method_changed, inputs=[controls["method"]],
                              outputs=[controls["sd_model"], controls["t2v_model"], training, train_button,
                                       resume_button, edit_button], **quick)


__all__ = ["INPUT_NAMES", "build", "edit", "edit_settings_from_values", "resume", "train", "train_settings_from_values"]
