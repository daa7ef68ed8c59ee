"""The VidGuide tab (script_callbacks.on_ui_tabs): start video jobs and manage them.

"Video" starts a job from an upload or a video on the server (inside the allowed roots) and
runs it in the tab's own request, exactly as txt2img runs a generation: the first input is
a "task(...)" id that javascript/vidguide.js fills in and hands to the WebUI's
requestProgress(), and the function is wrapped in the host's ``wrap_gradio_gpu_call``, which
takes the queue lock (shared with the API, so one job at a time on the GPU), begins and ends
``shared.state`` and registers the task for /internal/progress. After every frame the frame
and its weight map go to ``state.assign_current_image`` so the WebUI's own live preview
shows them.

Interrupt here stops the tab's job *after the current frame* (the WebUI's own Interrupt cuts
the frame short and loses it); every finished frame stays on disk and "Jobs" resumes the job.
Skip is the WebUI's: the current frame is replaced by the previous output moved by the flow.

Built from public gradio components only (no private ``modules.ui`` builders, no
``gr.X.update()``); gradio 3/4 differences go through ``compat``. Nothing runs at import.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from typing import Any, Optional

from ..jobs import Job, JobError, JobManifest, JobSettings
from ..paths import PathNotAllowedError, resolve_inside
from ..schedules import PRESETS
from ..settings import VideoSettings
from . import compat, host, jobs_host

logger = logging.getLogger("vidguide")

TAB_ID = "vidguide"
TAB_TITLE = "VidGuide"
PLACEMENTS = ("prepend", "append")

# The Generate function's inputs after the task id, in order (the JS passes them through).
VIDEO_INPUT_NAMES: tuple[str, ...] = (
    "video", "server_path", "name",
    "prompt", "negative_prompt", "sampler_name", "steps", "denoising_strength", "cfg_scale", "seed", "width", "height",
    "guidance_enabled", "strength", "schedule", "weight_mode", "flow_method", "warp_space",
    "first_frame_guide", "first_frame_strength", "first_frame_schedule", "color_correction", "second_pass",
    "second_pass_strength",
    "tagger_enabled", "tagger_model", "general_threshold", "character_threshold", "tagger_exclude", "tagger_placement",
    "start_frame", "max_frames", "every_nth", "fps", "keep_audio", "crf",
)

# Validation errors name the control the user sees, not the model's field path.
FIELD_LABELS: dict[str, str] = {
    "img2img.prompt": "Prompt",
    "img2img.negative_prompt": "Negative prompt",
    "img2img.steps": "Sampling steps",
    "img2img.denoising_strength": "Denoising strength",
    "img2img.cfg_scale": "CFG scale",
    "img2img.sampler_name": "Sampler",
    "video.seed": "Seed",
    "video.width": "Width",
    "video.height": "Height",
    "video.guidance.enabled": "Flow guidance",
    "video.guidance.strength": "Guidance strength",
    "video.guidance.schedule": "Schedule",
    "video.guidance.weight_mode": "Weight map",
    "video.guidance.flow_method": "Optical flow",
    "video.guidance.warp_space": "Warp in",
    "video.drift.first_frame_guide": "Guide toward the first frame",
    "video.drift.first_frame_strength": "First-frame strength",
    "video.drift.first_frame_schedule": "First-frame schedule",
    "video.drift.color_correction": "Colour correction",
    "video.drift.second_pass": "Second pass",
    "video.drift.second_pass_strength": "Second-pass strength",
    "video.tagger.enabled": "Tagger",
    "video.tagger.model": "Tagger model",
    "video.tagger.general_threshold": "General tag threshold",
    "video.tagger.character_threshold": "Character tag threshold",
    "video.tagger.exclude": "Excluded tags",
    "video.tagger.placement": "Tag placement",
    "video.start_frame": "Start frame",
    "video.max_frames": "Max frames",
    "video.every_nth": "Every n-th frame",
    "video.fps": "Output fps",
    "video.crf": "Quality (CRF)",
    "keep_audio": "Keep audio",
}

JOB_TABLE_HEADERS = ["id", "name", "status", "frames done/total", "warp error ×10³", "created"]


# --------------------------------------------------------------------------- settings


class TabInputError(ValueError):
    """Something the user must fix in the tab; the message says what and how."""


def _optional_size(value: Any) -> Optional[int]:
    """0 or an empty field means "the source's"."""
    return None if value in (None, "") or float(value) == 0 else value


def job_settings_from_values(values: dict[str, Any]) -> JobSettings:
    """The tab's control values (by VIDEO_INPUT_NAMES) as validated JobSettings."""
    from pydantic import ValidationError

    fps = values.get("fps")
    video = {
        "guidance": {
            "enabled": bool(values.get("guidance_enabled")),
            "strength": values.get("strength"),
            "schedule": values.get("schedule") or "",
            "weight_mode": values.get("weight_mode"),
            "flow_method": values.get("flow_method"),
            "warp_space": values.get("warp_space"),
        },
        "drift": {
            "first_frame_guide": bool(values.get("first_frame_guide")),
            "first_frame_strength": values.get("first_frame_strength"),
            "first_frame_schedule": values.get("first_frame_schedule") or "",
            "color_correction": bool(values.get("color_correction")),
            "second_pass": bool(values.get("second_pass")),
            "second_pass_strength": values.get("second_pass_strength"),
        },
        "tagger": {
            "enabled": bool(values.get("tagger_enabled")),
            "model": values.get("tagger_model") or "",
            "general_threshold": values.get("general_threshold"),
            "character_threshold": values.get("character_threshold"),
            "exclude": values.get("tagger_exclude") or "",
            "placement": values.get("tagger_placement"),
        },
        "start_frame": values.get("start_frame"),
        "max_frames": values.get("max_frames") if values.get("max_frames") not in (None, "") else 0,
        "every_nth": values.get("every_nth"),
        "width": _optional_size(values.get("width")),
        "height": _optional_size(values.get("height")),
        "fps": None if fps in (None, "") or float(fps) == 0 else fps,
        "seed": -1 if values.get("seed") in (None, "") else values.get("seed"),
        "crf": values.get("crf"),
    }
    img2img = {
        "prompt": values.get("prompt") or "",
        "negative_prompt": values.get("negative_prompt") or "",
        "steps": values.get("steps"),
        "denoising_strength": values.get("denoising_strength"),
        "cfg_scale": values.get("cfg_scale"),
        "sampler_name": values.get("sampler_name") or "",
    }
    try:
        settings = JobSettings.from_dict({"video": video, "img2img": img2img,
                                          "keep_audio": bool(values.get("keep_audio"))})
    except ValidationError as error:
        raise TabInputError("; ".join(describe_validation_error(error))) from error
    except ValueError as error:
        raise TabInputError(str(error)) from error
    if settings.video.tagger.enabled:
        from ..tagger import TaggerError, resolve_model_dir, tagger_models_dir

        try:
            resolve_model_dir(settings.video.tagger.model, tagger_models_dir(host.models_path()), allow_paths=False)
        except TaggerError as error:
            raise TabInputError(f"Tagger model: {error}") from error
    return settings


def describe_validation_error(error) -> list[str]:
    """One "Label: problem" line per field (pydantic 1 and 2 both have .errors())."""
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item.get("loc", ()) if part != "__root__")
        lines.append(f"{FIELD_LABELS.get(path, path or 'settings')}: {item.get('msg', 'invalid value')}")
    return lines


def source_from_values(upload: Any, server_path: Any) -> tuple[str, bool]:
    """(path, copy into the job?) from the upload or the server path; exactly one of them."""
    if isinstance(upload, dict):  # gradio's file data, should a host hand it over undecoded
        upload = upload.get("name") or upload.get("path")
    server_path = (server_path or "").strip() if isinstance(server_path, str) else ""
    if upload and server_path:
        raise TabInputError("Give either an uploaded video or a server path, not both: clear one of them.")
    if upload:
        return str(upload), True
    if not server_path:
        raise TabInputError("No source video: upload one, or type the path of a video on the server.")
    roots = host.allowed_roots()
    try:
        path = resolve_inside(server_path, roots, what="video")
    except PathNotAllowedError as error:
        listed = ", ".join(str(root) for root in roots) or "(none)"
        raise TabInputError(
            f"The path {server_path!r} is outside the folders VidGuide may read ({listed}). Move the video into "
            "one of them, upload it instead, or start the WebUI with --vidguide-allowed-roots naming its folder."
        ) from error
    if not path.is_file():
        raise TabInputError(f"There is no video file at {server_path!r}.")
    return str(path), False


# --------------------------------------------------------------------------- running jobs


class TabRuns:
    """The job the tab is running (one at a time: the queue lock) and Interrupt requests for it."""

    def __init__(self):
        self._lock = threading.Lock()
        self._job_id: Optional[str] = None
        self._stop = threading.Event()

    @property
    def job_id(self) -> Optional[str]:
        return self._job_id

    def start(self, job_id: str) -> None:
        with self._lock:
            self._job_id = job_id
            self._stop.clear()

    def finish(self, job_id: str) -> None:
        with self._lock:
            if self._job_id == job_id:
                self._job_id = None
                self._stop.clear()

    def request_stop(self) -> Optional[str]:
        """Stop the running job after its current frame; its id, or None if none runs."""
        with self._lock:
            if self._job_id is not None:
                self._stop.set()
            return self._job_id

    def stop_requested(self) -> bool:
        return self._stop.is_set()


runs = TabRuns()


def frame_preview(output, weight):
    """The frame and its weight map side by side (white = follow the guide); grey before a guide exists."""
    import numpy as np
    from PIL import Image

    frame = Image.fromarray(np.asarray(output, dtype=np.uint8)).convert("RGB")
    if weight is None:
        tile = Image.new("RGB", frame.size, (128, 128, 128))
    else:
        values = (np.clip(np.asarray(weight, dtype=np.float32), 0.0, 1.0) * 255).astype(np.uint8)
        tile = Image.fromarray(values).convert("RGB").resize(frame.size, Image.NEAREST)
    sheet = Image.new("RGB", (frame.width * 2, frame.height))
    sheet.paste(frame, (0, 0))
    sheet.paste(tile, (frame.width, 0))
    return sheet


def is_running(job_id: str) -> bool:
    return runs.job_id == job_id or jobs_host.is_active(job_id)


def run_in_tab(job: Job) -> tuple[Optional[str], Any, str]:
    """Run or resume ``job`` in this request (the caller holds the queue lock): (video, preview, status HTML)."""
    from modules.shared import state

    last = {"preview": None}

    def on_plan(plan) -> None:
        # run_job_here counts this pass's frames; count both passes and start from the frames
        # already done, so a resumed job's progress bar starts where it stopped.
        manifest = job.manifest
        passes = 2 if manifest.settings.video.drift.second_pass else 1
        state.job_count = plan.total * passes
        state.job_no = manifest.frames_done + manifest.second_pass_done

    def on_frame(event, pass_number) -> None:
        preview = frame_preview(event.output, event.weight)
        last["preview"] = preview
        if hasattr(state, "assign_current_image"):
            state.assign_current_image(preview)

    runs.start(job.job_id)
    try:
        manifest = jobs_host.run_job_here(job, should_stop=runs.stop_requested, on_frame=on_frame, on_plan=on_plan)
    except JobError as error:
        return None, last["preview"], message_html("error", f"Job {job.job_id}: {error}")
    except Exception as error:  # noqa: BLE001 - the manifest records it; the user gets a message, the log the traceback
        logger.exception("[-] VidGuide: job %s failed", job.job_id)
        return None, last["preview"], message_html(
            "error", f"Job {job.job_id} failed: {error or type(error).__name__}. Its finished frames are kept; "
            "fix the cause and resume it from the Jobs tab.")
    finally:
        runs.finish(job.job_id)
    return outcome(manifest, last["preview"])


def outcome(manifest: JobManifest, preview) -> tuple[Optional[str], Any, str]:
    if manifest.status == "done":
        error = manifest.warp_error_x1000
        lines = [f"Job {manifest.job_id} done: {manifest.frames_total} frames, seed {manifest.seed}"
                 + (f", warp error ×10³ {error:.3f}" if error is not None else "") + "."]
        if manifest.skipped_frames:
            skipped = ", ".join(str(index + 1) for index in sorted(manifest.skipped_frames))
            lines.append(f"Skipped frames (the previous output moved by the flow): {skipped}.")
        lines += list(manifest.notes) + list(manifest.audio_notes)
        return manifest.output, preview, message_html("done", *lines)
    if manifest.status == "interrupted":
        return None, preview, message_html(
            "interrupted",
            f"Job {manifest.job_id} interrupted after {manifest.frames_done} of {manifest.frames_total} frames; "
            "every finished frame is kept. Resume it from the Jobs tab.")
    return None, preview, message_html("error", f"Job {manifest.job_id}: {manifest.status}. {manifest.error or ''}")


def message_html(kind: str, *lines: str) -> str:
    body = "".join(f"<p>{html.escape(str(line))}</p>" for line in lines if line)
    return f"<div class='vidguide-status vidguide-{kind}' data-status='{kind}'>{body}</div>"


def generate(id_task: str, *values) -> tuple[Any, Any, str]:
    """Generate: validate, create the job (uploads are copied into it), run it here."""
    import gradio as gr

    named = dict(zip(VIDEO_INPUT_NAMES, values))
    try:
        settings = job_settings_from_values(named)
        source, copy = source_from_values(named.get("video"), named.get("server_path"))
        job = jobs_host.job_store().create(source, settings, copy_source=copy, name=(named.get("name") or "").strip())
    except (TabInputError, JobError, ValueError, OSError) as error:
        return gr.update(), gr.update(), message_html("error", str(error) or type(error).__name__)
    return run_in_tab(job)


def interrupt() -> None:
    job_id = runs.request_stop()
    if job_id is not None:
        logger.info("[+] VidGuide: job %s stops after its current frame", job_id)


def skip() -> None:
    from modules.shared import state

    state.skip()


# --------------------------------------------------------------------------- the Jobs sub-tab


def shown_status(manifest: JobManifest) -> str:
    """A manifest says "running" after a crash too: only a job running now is shown as running."""
    status = jobs_host.effective_status(manifest)
    if status != manifest.status:
        return "interrupted (stopped unexpectedly)" if manifest.status == "running" else "interrupted (not queued)"
    return status


def job_rows() -> list[list]:
    rows = []
    for manifest in jobs_host.job_store().list():
        done = f"{manifest.frames_done}/{manifest.frames_total}"
        if manifest.settings.video.drift.second_pass:
            done += f" (pass 2: {manifest.second_pass_done})"
        error = "" if manifest.warp_error_x1000 is None else f"{manifest.warp_error_x1000:.3f}"
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(manifest.created))
        rows.append([manifest.job_id, manifest.name, shown_status(manifest), done, error, created])
    return rows


def refresh_jobs(selected: Optional[str] = None, *, pick_first: bool = True):
    """The table's rows and the selector's choices; the selection is kept while the job exists."""
    import gradio as gr

    rows = job_rows()
    ids = [row[0] for row in rows]
    value = selected if selected in ids else (ids[0] if ids and pick_first else None)
    return rows or [[""] * len(JOB_TABLE_HEADERS)], gr.update(choices=ids, value=value)


def job_details(job_id: Optional[str]) -> tuple[Any, Any]:
    """The selected job's output video (when done) and a summary."""
    import gradio as gr

    if not job_id:  # nothing selected (e.g. just deleted): leave what is shown
        return gr.update(), gr.update()
    try:
        job = jobs_host.job_store().get(job_id)
    except JobError as error:
        return None, message_html("error", str(error))
    manifest = job.manifest
    video = manifest.output if manifest.status == "done" and job.output_path.exists() else None
    img2img, video_settings = manifest.settings.img2img, manifest.settings.video
    rows = [
        ("status", shown_status(manifest)),
        ("frames", f"{manifest.frames_done}/{manifest.frames_total}"
         + (f", second pass {manifest.second_pass_done}" if video_settings.drift.second_pass else "")),
        ("seed", manifest.seed),
        ("warp error ×10³", "" if manifest.warp_error_x1000 is None else f"{manifest.warp_error_x1000:.3f}"),
        ("prompt", img2img.prompt),
        ("img2img", f"{img2img.sampler_name}, {img2img.steps} steps, denoising {img2img.denoising_strength}, "
                    f"CFG {img2img.cfg_scale}"),
        ("guidance", f"strength {video_settings.guidance.strength}, {video_settings.guidance.schedule}"
         if video_settings.guidance.enabled else "off"),
        ("source", manifest.source.path),
        ("rendering time", f"{manifest.seconds_rendering:.1f} s"),
        ("output", manifest.output or ""),
        ("error", manifest.error or ""),
        ("notes", "; ".join([*manifest.notes, *manifest.audio_notes])),
    ]
    table = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(value))}</td></tr>"
                    for name, value in rows if value not in ("", None))
    return video, (f"<div class='vidguide-job' data-status='{html.escape(manifest.status)}'>"
                   f"<h3>{html.escape(manifest.name or job_id)} <code>{html.escape(job_id)}</code></h3>"
                   f"<table>{table}</table></div>")


def resume(id_task: str, job_id: Optional[str]) -> tuple[Any, str]:
    """Resume the selected job here, with the same progress bar as Generate."""
    import gradio as gr

    if not job_id:
        return gr.update(), message_html("error", "Choose a job to resume (press Refresh if the list is empty).")
    try:
        job = jobs_host.job_store().get(job_id)
    except JobError as error:
        return gr.update(), message_html("error", str(error))
    if job.manifest.status == "done":
        return job.manifest.output, message_html("error", f"Job {job_id} is already done.")
    if jobs_host.is_active(job_id):
        return gr.update(), message_html("error", f"Job {job_id} is already queued or running (here or over the "
                                                  "API); interrupt or cancel it first.")
    video, _, status = run_in_tab(job)
    return video, status


def delete_job(job_id: Optional[str]) -> tuple[str, str]:
    """Delete a job and its files, never a running one: (message kind, message)."""
    if not job_id:
        return "error", "Choose a job to delete."
    if is_running(job_id):
        return "error", f"Job {job_id} is running or queued; interrupt it first."
    try:
        jobs_host.delete_job(job_id)
    except JobError as error:
        return "error", str(error)
    return "deleted", f"Deleted job {job_id} and its files."


def delete(job_id: Optional[str]):
    import gradio as gr

    kind, text = delete_job(job_id)
    deleted = kind == "deleted"
    table, selector = refresh_jobs(None if deleted else job_id, pick_first=not deleted)
    return table, selector, None if deleted else gr.update(), message_html(kind, text)


# --------------------------------------------------------------------------- the UI


def _description(model, name: str) -> Optional[str]:
    fields = model.model_fields if hasattr(model, "model_fields") else model.__fields__
    field = fields[name]
    return field.field_info.description if hasattr(field, "field_info") else field.description


def _tagger_choices() -> list[str]:
    from ..tagger import list_tagger_models, tagger_models_dir

    return list_tagger_models(tagger_models_dir(host.models_path()))


def _source_controls(controls: dict) -> None:
    import gradio as gr

    roots = ", ".join(str(root) for root in host.allowed_roots())
    with gr.Row():
        controls["video"] = compat.video_input("Source video (upload)", "vidguide_video")
        with gr.Column():
            controls["server_path"] = gr.Textbox(label="…or a video on the server", placeholder="/path/to/video.mp4",
                                                 info=f"Inside: {roots}", elem_id="vidguide_server_path")
            controls["name"] = gr.Textbox(label="Job name (optional)", elem_id="vidguide_name")


def _img2img_controls(controls: dict) -> None:
    import gradio as gr

    defaults = JobSettings().img2img
    samplers = compat.sampler_names() or [defaults.sampler_name]
    sampler = defaults.sampler_name if defaults.sampler_name in samplers else samplers[0]
    controls["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="vidguide_prompt")
    controls["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="vidguide_negative_prompt")
    with gr.Row():
        controls["sampler_name"] = gr.Dropdown(choices=samplers, value=sampler, label="Sampler",
                                               elem_id="vidguide_sampler")
        controls["steps"] = gr.Slider(1, 150, value=defaults.steps, step=1, label="Sampling steps",
                                      elem_id="vidguide_steps")
    with gr.Row():
        controls["denoising_strength"] = gr.Slider(0.01, 1.0, value=defaults.denoising_strength, step=0.01,
                                                   label="Denoising strength", elem_id="vidguide_denoising_strength")
        controls["cfg_scale"] = gr.Slider(1.0, 30.0, value=defaults.cfg_scale, step=0.5, label="CFG scale",
                                          elem_id="vidguide_cfg_scale")
    with gr.Row():
        controls["seed"] = gr.Number(value=VideoSettings().seed, precision=0, label="Seed (-1 = random)",
                                     elem_id="vidguide_seed")
        controls["width"] = gr.Number(value=0, precision=0, label="Width (0 = the source's)", elem_id="vidguide_width")
        controls["height"] = gr.Number(value=0, precision=0, label="Height (0 = the source's)",
                                       elem_id="vidguide_height")


def _guidance_controls(controls: dict) -> None:
    import gradio as gr

    from . import ui

    defaults = VideoSettings().guidance
    with gr.Accordion("Flow guidance", open=True, elem_id="vidguide_guidance"):
        controls["guidance_enabled"] = gr.Checkbox(value=defaults.enabled, elem_id="vidguide_guidance_enabled",
                                                   label="Flow guidance (off = plain per-frame img2img)")
        guidance = ui.guidance_controls(lambda name: f"vidguide_guidance_{name}", defaults)
        controls.update({name: guidance[name] for name in ("strength", "schedule", "weight_mode", "flow_method",
                                                           "warp_space")})


def _drift_controls(controls: dict) -> None:
    import gradio as gr

    from ..settings import DriftSettings

    drift = DriftSettings()
    with gr.Accordion("Drift control", open=False, elem_id="vidguide_drift"):
        with gr.Row():
            controls["first_frame_guide"] = gr.Checkbox(
                value=drift.first_frame_guide, label="Also guide toward the first frame",
                info=_description(DriftSettings, "first_frame_guide"), elem_id="vidguide_drift_first_frame_guide")
            controls["first_frame_strength"] = gr.Slider(
                0.0, 1.0, value=drift.first_frame_strength, step=0.01, label="First-frame strength",
                elem_id="vidguide_drift_first_frame_strength")
            controls["first_frame_schedule"] = gr.Dropdown(
                choices=list(PRESETS), value=drift.first_frame_schedule, allow_custom_value=True,
                label="First-frame schedule", elem_id="vidguide_drift_first_frame_schedule")
        with gr.Row():
            controls["color_correction"] = gr.Checkbox(
                value=drift.color_correction, label="Colour correction to the first frame",
                info=_description(DriftSettings, "color_correction"), elem_id="vidguide_drift_color_correction")
            controls["second_pass"] = gr.Checkbox(
                value=drift.second_pass, label="Second pass", info=_description(DriftSettings, "second_pass"),
                elem_id="vidguide_drift_second_pass")
            controls["second_pass_strength"] = gr.Slider(
                0.01, 1.0, value=drift.second_pass_strength, step=0.01, label="Second-pass strength",
                elem_id="vidguide_drift_second_pass_strength")


def _tagger_controls(controls: dict):
    """The tagger's controls; returns its "Refresh models" button."""
    import gradio as gr

    from ..settings import TaggerSettings

    tagger = TaggerSettings()
    with gr.Accordion("Per-frame prompts from a booru tagger", open=False, elem_id="vidguide_tagger"):
        with gr.Row():
            controls["tagger_enabled"] = gr.Checkbox(value=tagger.enabled, elem_id="vidguide_tagger_enabled",
                                                     label="Add each source frame's tags to its prompt")
            controls["tagger_model"] = gr.Dropdown(choices=_tagger_choices(), value=None, label="Tagger model",
                                                   info=_description(TaggerSettings, "model"),
                                                   elem_id="vidguide_tagger_model")
            refresh = gr.Button("Refresh models", elem_id="vidguide_tagger_refresh")
        with gr.Row():
            controls["general_threshold"] = gr.Slider(0.0, 1.0, value=tagger.general_threshold, step=0.01,
                                                      label="General tag threshold",
                                                      elem_id="vidguide_tagger_general_threshold")
            controls["character_threshold"] = gr.Slider(0.0, 1.0, value=tagger.character_threshold, step=0.01,
                                                        label="Character tag threshold",
                                                        elem_id="vidguide_tagger_character_threshold")
        with gr.Row():
            controls["tagger_exclude"] = gr.Textbox(value=tagger.exclude, label="Excluded tags",
                                                    info=_description(TaggerSettings, "exclude"),
                                                    elem_id="vidguide_tagger_exclude")
            controls["tagger_placement"] = gr.Radio(choices=list(PLACEMENTS), value=tagger.placement, label="Tags go",
                                                    elem_id="vidguide_tagger_placement")
    return refresh


def _frame_controls(controls: dict) -> None:
    import gradio as gr

    defaults = VideoSettings()
    with gr.Accordion("Frames and output", open=True, elem_id="vidguide_frames"):
        with gr.Row():
            controls["start_frame"] = gr.Number(value=defaults.start_frame, precision=0, label="Start frame",
                                                elem_id="vidguide_start_frame")
            controls["max_frames"] = gr.Number(value=defaults.max_frames, precision=0, label="Max frames (0 = all)",
                                               elem_id="vidguide_max_frames")
            controls["every_nth"] = gr.Number(value=defaults.every_nth, precision=0, label="Every n-th frame",
                                              elem_id="vidguide_every_nth")
            controls["fps"] = gr.Number(value=0, label="Output fps (0 = source)", elem_id="vidguide_fps")
        with gr.Row():
            controls["keep_audio"] = gr.Checkbox(value=JobSettings().keep_audio, label="Keep the source's audio",
                                                 elem_id="vidguide_keep_audio")
            controls["crf"] = gr.Slider(0, 51, value=defaults.crf, step=1, label="Quality (CRF, lower is better)",
                                        elem_id="vidguide_crf")


def on_ui_tabs():
    """script_callbacks.on_ui_tabs: [(blocks, title, elem_id)]."""
    import gradio as gr

    controls: dict[str, Any] = {}
    with gr.Blocks(analytics_enabled=False) as blocks:
        with gr.Tabs(elem_id="vidguide_tabs"):
            with gr.TabItem("Video", id="vidguide_video_tab", elem_id="vidguide_video_tab"):
                # Filled by javascript/vidguide.js with the task id the progress bar follows.
                id_task = gr.Textbox(visible=False, elem_id="vidguide_id_task")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, elem_id="vidguide_settings"):
                        _source_controls(controls)
                        _img2img_controls(controls)
                        _guidance_controls(controls)
                        _drift_controls(controls)
                        tagger_refresh = _tagger_controls(controls)
                        _frame_controls(controls)
                    with gr.Column(scale=2, elem_id="vidguide_output_panel"):
                        with gr.Row():
                            generate_button = gr.Button("Generate", variant="primary", elem_id="vidguide_generate")
                            interrupt_button = gr.Button("Interrupt", elem_id="vidguide_interrupt")
                            skip_button = gr.Button("Skip", elem_id="vidguide_skip")
                        gr.Markdown("**Interrupt** stops after the current frame and keeps every finished frame "
                                    "(resume the job from *Jobs*). **Skip** skips the current frame.",
                                    elem_id="vidguide_buttons_help")
                        # The progress bar goes above this column; live previews inside the preview.
                        with gr.Column(elem_id="vidguide_results"):
                            result_video = gr.Video(label="Result", interactive=False, elem_id="vidguide_result")
                            preview = gr.Image(label="Last frame | its weight map", type="pil", interactive=False,
                                               elem_id="vidguide_preview")
                        status = gr.HTML(elem_id="vidguide_status")

            with gr.TabItem("Jobs", id="vidguide_jobs_tab", elem_id="vidguide_jobs_tab") as jobs_tab:
                job_id_task = gr.Textbox(visible=False, elem_id="vidguide_job_id_task")
                with gr.Row():
                    refresh_button = gr.Button("Refresh", elem_id="vidguide_jobs_refresh")
                table = gr.Dataframe(headers=JOB_TABLE_HEADERS, datatype=["str"] * len(JOB_TABLE_HEADERS),
                                     interactive=False, wrap=True, elem_id="vidguide_jobs_table")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        selector = gr.Dropdown(choices=[], value=None, label="Job", elem_id="vidguide_job_select")
                        with gr.Row():
                            resume_button = gr.Button("Resume", variant="primary", elem_id="vidguide_job_resume")
                            job_interrupt_button = gr.Button("Interrupt", elem_id="vidguide_job_interrupt")
                            delete_button = gr.Button("Delete", elem_id="vidguide_job_delete")
                        job_details_html = gr.HTML(elem_id="vidguide_job_details")
                    with gr.Column(scale=2, elem_id="vidguide_job_results"):
                        job_video = gr.Video(label="Output", interactive=False, elem_id="vidguide_job_video")

            # --- Motion brush sub-tab: built by lib_vidguide/webui/motion_brush_tab.py (events included).
            with gr.TabItem("Motion brush", id="vidguide_motion_brush_tab", elem_id="vidguide_motion_brush_tab"):
                from . import motion_brush_tab

                motion_brush_tab.build()
            # --- end of the motion brush sub-tab.

            # --- Edit sub-tab (Tune-A-Video, Motion Inversion, AttentionFlow): lib_vidguide/webui/edit_tab.py.
            with gr.TabItem("Edit", id="vidguide_edit_tab", elem_id="vidguide_edit_tab"):
                from . import edit_tab

                edit_tab.build()
            # --- end of the edit sub-tab.

        # Generate and Resume run like txt2img: the host's GPU wrapper, the task id from the JS.
        generate_button.click(
            fn=compat.gpu_call(generate, extra_outputs=[gr.update(), gr.update()]),
            inputs=[id_task] + [controls[name] for name in VIDEO_INPUT_NAMES], outputs=[result_video, preview, status],
            **compat.event_options(js="vidguideSubmit", show_progress=False),
        )
        resume_button.click(
            fn=compat.gpu_call(resume, extra_outputs=[gr.update()]),
            inputs=[job_id_task, selector], outputs=[job_video, job_details_html],
            **compat.event_options(js="vidguideResume", show_progress=False),
        ).then(fn=refresh_jobs, inputs=[selector], outputs=[table, selector])
        # Interrupt and Skip must not wait behind the running job in gradio's queue.
        for button in (interrupt_button, job_interrupt_button):
            button.click(fn=interrupt, inputs=[], outputs=[],
                         **compat.event_options(js="vidguideInterrupting", show_progress=False, queue=False))
        skip_button.click(fn=skip, inputs=[], outputs=[], **compat.event_options(show_progress=False, queue=False))

        # Quick reads of the jobs folder: no queue, no loading overlay.
        quick = compat.event_options(show_progress=False, queue=False)
        tagger_refresh.click(fn=lambda: gr.update(choices=_tagger_choices()), inputs=[],
                             outputs=[controls["tagger_model"]], **quick)
        jobs_tab.select(fn=refresh_jobs, inputs=[selector], outputs=[table, selector], **quick)
        refresh_button.click(fn=refresh_jobs, inputs=[selector], outputs=[table, selector], **quick)
        selector.change(fn=job_details, inputs=[selector], outputs=[job_video, job_details_html], **quick)
        delete_button.click(fn=delete, inputs=[selector], outputs=[table, selector, job_video, job_details_html],
                            **compat.event_options(js="vidguideConfirmDelete", show_progress=False))

    return [(blocks, TAB_TITLE, TAB_ID)]


__all__ = ["TAB_ID", "TAB_TITLE", "VIDEO_INPUT_NAMES", "job_settings_from_values", "on_ui_tabs", "source_from_values"]
