"""The img2img HTTP route and its script-args mapping, as modules/api/api.py does them.

- ``script_name`` picks a selectable script by title, case-insensitively; its
  ``script_args`` are *slice-assigned* into the args list (a wrong length shifts every
  later AlwaysOn script's args), and args[0] becomes its 1-based index.
- ``alwayson_scripts`` is ``{"<title, any case>": {"args": [...]}}``; values are copied
  positionally, min(len(args), args_to - args_from) of them; a bare list is ignored; a
  selectable script there is a 422.
- Image values inside script args are passed through raw (base64 strings).
"""

import base64
import io
import threading
from typing import Any, Optional

from fastapi import FastAPI, HTTPException
from PIL import Image
from pydantic import BaseModel, Field

from modules import processing, scripts, shared
from modules.shared import state

queue_lock = threading.Lock()


def decode_base64_to_image(encoding: str) -> Image.Image:
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        image = Image.open(io.BytesIO(base64.b64decode(encoding)))
        image.load()
        return image
    except Exception as error:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from error


def encode_pil_to_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def script_name_to_index(name, scripts_list):
    try:
        return [script.title().lower() for script in scripts_list].index(name.lower())
    except Exception as error:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from error


def get_selectable_script(script_name, script_runner):
    if script_name is None or script_name == "":
        return None, None
    script_idx = script_name_to_index(script_name, script_runner.selectable_scripts)
    return script_runner.selectable_scripts[script_idx], script_idx


def init_script_args(request, default_script_args, selectable_script, selectable_idx, script_runner):
    script_args = list(default_script_args)
    if selectable_script:
        script_args[selectable_script.args_from:selectable_script.args_to] = request.script_args
        script_args[0] = selectable_idx + 1
    if request.alwayson_scripts:
        for name, payload in request.alwayson_scripts.items():
            script = script_runner.scripts[script_name_to_index(name, script_runner.scripts)]
            if script.alwayson is False:
                raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
            if "args" in payload:
                args = payload["args"]
                for index in range(min(script.args_to - script.args_from, len(args))):
                    script_args[script.args_from + index] = args[index]
    return script_args


class Img2ImgRequest(BaseModel):
    init_images: list = Field(default_factory=list)
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    subseed: int = -1
    sampler_name: Optional[str] = "Euler"
    scheduler: Optional[str] = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 64
    denoising_strength: float = 0.75
    resize_mode: int = 0
    script_name: Optional[str] = None
    script_args: list = Field(default_factory=list)
    alwayson_scripts: dict = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False


_NOT_PROCESSING_FIELDS = {"init_images", "script_name", "script_args", "alwayson_scripts", "send_images", "save_images"}


def img2img(req: Img2ImgRequest):
    runner = scripts.scripts_img2img
    init_images = [decode_base64_to_image(x) for x in req.init_images]
    if not init_images:
        raise HTTPException(status_code=404, detail="Init image not found")
    selectable, selectable_idx = get_selectable_script(req.script_name, runner)
    script_args = init_script_args(req, runner.default_script_args(), selectable, selectable_idx, runner)
    fields = {k: v for k, v in req.dict().items() if k not in _NOT_PROCESSING_FIELDS}
    with queue_lock:
        p = processing.StableDiffusionProcessingImg2Img(sd_model=shared.sd_model, **fields)
        p.init_images = init_images
        p.scripts = runner
        p.is_api = True
        p.do_not_save_grid = True
        p.do_not_save_samples = not req.save_images
        state.begin(job="scripts_img2img")
        try:
            if selectable is not None:
                p.script_args = script_args
                processed = runner.run(p, *p.script_args)
            else:
                p.script_args = tuple(script_args)
                processed = processing.process_images(p)
        finally:
            state.end()
    images = [encode_pil_to_base64(image) for image in processed.images] if req.send_images else []
    return {"images": images, "parameters": {}, "info": processed.js()}


def create_api_app(demo=None) -> FastAPI:
    """The /sdapi/v1 routes the extension's HTTP tests use, on a bare FastAPI app (--nowebui,
    where on_app_started gets demo=None; the stand-in page passes its gr.Blocks)."""
    from fastapi.responses import JSONResponse

    app = FastAPI()

    @app.exception_handler(Exception)
    async def handle_exception(request, error):  # the host's api_middleware answers errors like this
        return JSONResponse(status_code=vars(error).get("status_code", 500), content={
            "error": type(error).__name__, "detail": vars(error).get("detail", ""),
            "body": vars(error).get("body", ""), "errors": str(error),
        })
    app.add_api_route("/sdapi/v1/img2img", img2img, methods=["POST"])

    def list_scripts():
        # Every img2img script with a UI, AlwaysOn ones included (the stand-in has no txt2img runner).
        runner = scripts.scripts_img2img
        return {"txt2img": [], "img2img": [s.name for s in runner.scripts if s.name]}

    def script_info():
        runner = scripts.scripts_img2img

        def arg(control):
            return {key: getattr(control, key, None) for key in ("label", "value", "minimum", "maximum", "step", "choices")}

        return [
            {"name": script.name, "is_alwayson": script.alwayson, "is_img2img": True,
             "args": [arg(control) for control in script.controls or []]}
            for script in runner.scripts
        ]

    def interrupt():
        state.interrupt()
        return {}

    def skip():
        state.skip()
        return {}

    def progress():
        return {"progress": 0 if state.job_count == 0 else state.job_no / max(state.job_count, 1), "state": state.dict()}

    app.add_api_route("/sdapi/v1/scripts", list_scripts, methods=["GET"])
    # As webui.py does in --nowebui mode: extensions add their routes with demo=None.
    from modules import script_callbacks

    script_callbacks.app_started_callback(demo, app)
    app.add_api_route("/sdapi/v1/script-info", script_info, methods=["GET"])
    app.add_api_route("/sdapi/v1/interrupt", interrupt, methods=["POST"])
    app.add_api_route("/sdapi/v1/skip", skip, methods=["POST"])
    app.add_api_route("/sdapi/v1/progress", progress, methods=["GET"])
    return app
