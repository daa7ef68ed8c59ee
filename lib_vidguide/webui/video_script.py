"""The selectable img2img script "VidGuide video": a whole video through process_images.

Each frame goes through the host's own ``process_images`` (so ControlNet, LoRA and the
other AlwaysOn scripts keep working per frame) with the flow-guidance hooks registered
around that call only.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
from modules import scripts

from ..engine import FrameEvent, FrameGuideInput, FramePlan, RenderedFrame, RenderInterrupted, run_video
from ..frame_guide import guidance_for_frame
from ..errors import UserInputError
from ..paths import resolve_inside
from ..settings import VideoSettings, args_to_mapping, guidance_from_values
from . import compat, hooks, host, ui

logger = logging.getLogger("vidguide")

TITLE = "VidGuide video"


def video_settings_from_args(args: tuple) -> tuple[Any, VideoSettings]:
    values = args_to_mapping(args, ui.VIDEO_ARG_NAMES)
    guidance = guidance_from_values(values)
    fps = float(values.get("fps") or 0)
    settings = VideoSettings(
        guidance=guidance,
        start_frame=int(values.get("start_frame") or 0),
        max_frames=int(values.get("max_frames") or 0),
        every_nth=int(values.get("every_nth") or 1),
        fps=fps if fps > 0 else None,
    )
    return values["video"], settings


def sent_script_arg_count(p: Any, script: Any) -> Optional[int]:
    """How many args an API request sent for ``script``, or None when that cannot be told.

    The host slice-assigns a request's ``script_args`` into the full default args list, so a
    wrong count changes the list's total length; the script's own slice may still look complete
    (extra values fall outside it; missing ones are made up by the args of the scripts after it).
    """
    runner = getattr(p, "scripts", None)
    every_script = getattr(runner, "scripts", None)
    total = getattr(p, "script_args", None)
    if not every_script or total is None or script.args_from is None or script.args_to is None:
        return None
    expected_total = max([s.args_to for s in every_script if s.args_to is not None] + [1])
    return len(total) - expected_total + (script.args_to - script.args_from)


def resolve_video(value: Any, *, from_api: bool) -> tuple[str, Optional[str]]:
    """A video arg as a file path: a path (UI upload or server path) or a base64 data URL.

    A path from an API caller must lie inside the allowed roots (--vidguide-allowed-roots).
    Returns (path, temporary path to delete afterwards or None).
    """
    if isinstance(value, dict):
        value = value.get("name") or value.get("video") or value.get("path")
    if not value or not isinstance(value, str):
        raise ValueError("no source video: upload one, or over the API pass a file path or a base64 data URL")
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        suffix = ".mp4" if "mp4" in header else ".webm" if "webm" in header else ".mov" if "quicktime" in header else ".video"
        handle, path = tempfile.mkstemp(suffix=suffix, prefix="vidguide-upload-")
        with os.fdopen(handle, "wb") as file:
            file.write(base64.b64decode(payload))
        return path, path
    if from_api:
        return str(resolve_inside(value, host.allowed_roots(), what="video")), None
    return value, None


def output_directory() -> Path:
    from modules import shared

    base = shared.opts.data.get("outdir_img2img_samples") or str(host.data_path() / "outputs" / "img2img-images")
    directory = Path(base).parent / "vidguide"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


class WebUIFrameRenderer:
    """Renders one frame with the host's process_images, guided by the previous output."""

    def __init__(self, p: Any, settings: VideoSettings, base_seed: int):
        self.p = p
        self.settings = settings
        self.base_seed = base_seed
        self.base_prompt = p.prompt

    def render(self, frame: np.ndarray, guide: Optional[FrameGuideInput], index: int) -> RenderedFrame:
        import torch
        from modules import processing
        from PIL import Image

        p = self.p
        p.init_images = [Image.fromarray(frame)]
        if self.settings.tagger.enabled:
            from ..tagger import prompt_for_frame, tagger_models_dir

            p.prompt = prompt_for_frame(self.base_prompt, frame, self.settings.tagger, tagger_models_dir(host.models_path()))
        p._vg_capture_latent = self.settings.guidance.warp_space == "latent"
        p._vg_last_latent = None
        step_guidance = None
        if guide is not None:
            step_guidance = guidance_for_frame(self.settings, guide, encode=lambda rgb: compat.encode_rgb(p.sd_model, rgb),
                                               latent_hw=(p.height // 8, p.width // 8))
            hooks.activate(p, step_guidance)
        # The host encodes the init image by *sampling* the VAE posterior with the global RNG;
        # seeding it per frame makes every frame reproducible on its own (and so resumable).
        torch.manual_seed((self.base_seed * 1_000_003 + index) % (2**63))
        try:
            processed = processing.process_images(p)
        finally:
            hooks.deactivate(step_guidance)
        from modules.shared import state

        if state.interrupted or getattr(state, "stopping_generation", False):
            # The host stopped sampling mid-frame and returned a half-denoised picture: not a frame.
            raise RenderInterrupted()
        if state.skipped:
            state.skipped = False
            return RenderedFrame(self._stand_in(frame, guide), None, skipped=True)
        images = processed.images[getattr(processed, "index_of_first_image", 0):]
        if not images:
            raise RuntimeError(f"frame {index + 1}: the WebUI returned no image (was it interrupted?)")
        image = np.asarray(images[0].convert("RGB"), dtype=np.uint8)
        return RenderedFrame(image, getattr(p, "_vg_last_latent", None))


    @staticmethod
    def _stand_in(frame: np.ndarray, guide: Optional[FrameGuideInput]) -> np.ndarray:
        """A skipped frame's picture: the previous output moved by the flow, else the source frame."""
        if guide is None:
            return frame
        from ..flow import backward_warp

        return backward_warp(guide.previous_output, guide.motion.pair.backward)


class VidGuideVideoScript(scripts.Script):
    def title(self):
        return TITLE

    def show(self, is_img2img):
        return bool(is_img2img)

    def ui(self, is_img2img):
        return ui.video_controls(self.elem_id)

    def _checked_request(self, p, args) -> tuple[str, Optional[str], VideoSettings]:
        """Everything the caller sent, checked before any frame runs: (video path, temporary
        copy to delete or None, settings). Bad input raises UserInputError, whose status code
        the WebUI's API answers with (422, or 403 for a path outside the allowed folders)."""
        from ..engine import plan_frames

        temporary = None
        try:
            if getattr(p, "is_api", False):
                sent = sent_script_arg_count(p, self)
                if sent is not None and sent != len(args):
                    args_to_mapping([None] * sent, ui.VIDEO_ARG_NAMES)  # raises "expected 11 script args ..., got n"
            video_arg, settings = video_settings_from_args(args)
            settings = VideoSettings.from_dict({**settings.to_dict(), "width": p.width, "height": p.height})
            source, temporary = resolve_video(video_arg, from_api=bool(getattr(p, "is_api", False)))
            plan_frames(source, settings)
        except ValueError as error:
            if temporary:
                os.unlink(temporary)
            if isinstance(error, UserInputError):
                raise
            raise UserInputError(str(error)) from error
        return source, temporary, settings

    def run(self, p, *args):
        from modules import processing
        from modules.shared import state

        source, temporary, settings = self._checked_request(p, args)
        try:
            processing.fix_seed(p)
            p.n_iter = 1
            p.batch_size = 1
            p.do_not_save_grid = True
            p._vg_video_owned = True
            output = output_directory() / f"{time.strftime('%Y%m%d-%H%M%S')}-{p.seed}.mp4"
            renderer = WebUIFrameRenderer(p, settings, p.seed)

            def on_plan(plan: FramePlan) -> None:
                # Set before the first process_images, which then keeps it and counts frames.
                state.job_count = plan.total

            def on_frame(event: FrameEvent) -> None:
                state.job = f"Frame {event.index + 2}/{event.total}" if event.index + 1 < event.total else ""
                state.textinfo = state.job

            result = run_video(
                source, output, renderer, settings, frames_dir=output.with_suffix(""), on_plan=on_plan, on_frame=on_frame,
                should_stop=lambda: bool(state.interrupted or state.stopping_generation),
            )
        finally:
            hooks.deactivate()
            p._vg_video_owned = False
            if temporary:
                os.unlink(temporary)
        info = {
            "vidguide": {
                "output": str(result.output_path) if result.output_path else None,
                "frames_dir": str(output.with_suffix("")),
                "frames": result.frames_written,
                "planned_frames": result.total_frames,
                "interrupted": result.interrupted,
                "fps": float(result.fps),
                "seed": p.seed,
                "settings": settings.to_dict(),
            }
        }
        from PIL import Image

        images = [Image.fromarray(result.last_frame)] if result.last_frame is not None else []
        return processing.Processed(p, images, p.seed, json.dumps(info), infotexts=[json.dumps(info)] * len(images))
