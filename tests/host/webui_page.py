"""The stand-in WebUI page: extension tabs on a gradio page (3.41 as A1111, 4.40 as Forge), served by
uvicorn on loopback.

What it keeps of the real host (modules/ui.py, ui_gradio_extensions.py, webui.py):
- the tabs come from ``script_callbacks.ui_tabs_callback()`` and each is rendered inside
  ``gr.Tabs(elem_id="tabs")`` as ``gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}")``, after a
  built-in tab, so a test has to click its way to the extension's tab as a user does;
- every page gets the host's scripts, then each extension's ``javascript/*.js``, as
  ``<script>`` tags before ``</head>`` (the host patches gradio's template response; here a
  small ASGI middleware rewrites the page's HTML, leaving gradio itself untouched);
- the queue is on as the hosts turn it on, ``demo.queue(64)``: 64 workers in gradio 3 (A1111); in
  gradio 4 (Forge) the 64 lands on ``status_update_rate`` and every event keeps gradio 4's default
  concurrency limit of 1;
- under gradio 4 the page is built as Forge builds it: Forge's shim
  (``modules/gradio_extensions.py``) is installed first, see :func:`install_forge_gradio_shim`;
- an "img2img" tab holds the scripts' UIs as the host's img2img tab does (AlwaysOn scripts in
  their groups, then the "Script" dropdown that shows the selected script's group);
- /internal/progress (modules/progress.py), the /sdapi/v1 routes and the extensions' routes
  (on_app_started, with the page's demo) are served by the same app.

The host's own script.js and progressbar.js are replaced by small stand-ins written for the
tests (tests/host/javascript/).
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HOST_JAVASCRIPT = Path(__file__).resolve().parent / "javascript"
# The order the host loads them in: script.js first, then its javascript/*.js by name.
HOST_SCRIPTS = ("script.js", "inputAccordion.js", "progressbar.js")


def script_files(extension_dirs) -> list[Path]:
    files = [HOST_JAVASCRIPT / name for name in HOST_SCRIPTS]
    for extension_dir in extension_dirs:
        files += sorted((Path(extension_dir) / "javascript").glob("*.js"))
    return files


def gradio_major() -> int:
    """4 where gradio has ImageEditor (gradio 4, Forge), else 3 (A1111's 3.41): a feature, not a version string."""
    import gradio as gr

    return 4 if hasattr(gr, "ImageEditor") else 3


def artefacts_dir() -> Path:
    """Where the browser tests keep their screenshots: tests/artefacts/gradio<major>/."""
    path = Path(__file__).resolve().parents[1] / "artefacts" / f"gradio{gradio_major()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


class GradioDeprecationWarning(DeprecationWarning):
    """What Forge's shim warns with when it drops a keyword argument (its own class of that name)."""


_shim_installed = False


def install_forge_gradio_shim() -> bool:
    """Under gradio 4, patch gradio as Forge's ``modules/gradio_extensions.py`` does, once per process;
    returns whether the shim is (now) installed. What is kept of it, the parts an extension meets:

    - every component's and layout's ``__init__`` turns ``source=`` into ``sources=[source]``, pops
      ``tooltip=`` and **silently drops any other keyword its signature lacks** (``tool="sketch"``,
      ``brush_color=`` ...), with only a ``GradioDeprecationWarning`` ("unexpected argument for
      <Class>: <name>");
    - events and ``.then`` accept gradio 3's ``_js=`` as ``js=``; ``Component.update`` is ``gr.update``;
      ``gr.Box`` is ``gr.Group``;
    - components get the ``gradio-<block name>`` CSS class;
    - classes marked ``webui_do_not_create_gradio_pyi_thank_you`` get no generated ``.pyi`` file.
    """
    global _shim_installed
    if _shim_installed:
        return True
    if gradio_major() < 4:
        return False
    import inspect
    import warnings
    from functools import wraps

    import gradio as gr
    import gradio.component_meta

    original_create_pyi = gradio.component_meta.create_or_modify_pyi

    def create_or_modify_pyi(component_class, class_name, events):
        if hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
            return
        original_create_pyi(component_class, class_name, events)

    gradio.component_meta.create_or_modify_pyi = create_or_modify_pyi

    original_component_init = gr.components.Component.__init__

    def component_init(self, *args, **kwargs):
        self.webui_tooltip = kwargs.pop("tooltip", None)
        result = original_component_init(self, *args, **kwargs)
        self.elem_classes = [f"gradio-{self.get_block_name()}", *(getattr(self, "elem_classes", None) or [])]
        return result

    gr.components.Component.__init__ = component_init

    class EventWrapper:
        def __init__(self, replaced_event):
            self.replaced_event = replaced_event
            self.has_trigger = getattr(replaced_event, "has_trigger", None)
            self.event_name = getattr(replaced_event, "event_name", None)
            self.callback = getattr(replaced_event, "callback", None)
            self.real_self = getattr(replaced_event, "__self__", None)

        def __call__(self, *args, **kwargs):
            if "_js" in kwargs:
                kwargs["js"] = kwargs.pop("_js")
            return self.replaced_event(*args, **kwargs)

        @property
        def __self__(self):
            return self.real_self

    def repair(grclass):
        if not getattr(grclass, "EVENTS", None):
            return

        @wraps(grclass.__init__)
        def __repaired_init__(self, *args, tooltip=None, source=None, original=grclass.__init__, **kwargs):
            if source:
                kwargs["sources"] = [source]
            allowed = inspect.signature(original).parameters
            fixed = {}
            for name, value in kwargs.items():
                if name in allowed:
                    fixed[name] = value
                else:
                    warnings.warn(f"unexpected argument for {grclass.__name__}: {name}", GradioDeprecationWarning,
                                  stacklevel=2)
            original(self, *args, **fixed)
            self.webui_tooltip = tooltip
            for event in self.EVENTS:
                setattr(self, str(event), EventWrapper(getattr(self, str(event))))

        grclass.__init__ = __repaired_init__
        grclass.update = gr.update

    for name in set(gr.components.__all__ + gr.layouts.__all__):
        repair(getattr(gr, name, None))

    class Dependency(gr.events.Dependency):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            original_then = self.then

            def then(*xargs, _js=None, **xkwargs):
                if _js:
                    xkwargs["js"] = _js
                return original_then(*xargs, **xkwargs)

            self.then = then

    gr.events.Dependency = Dependency
    gr.Box = gr.Group
    _shim_installed = True
    return True


def build_img2img_scripts(gr):
    """The img2img tab's scripts area as the host builds it (modules/scripts.py ``setup_ui``): a fresh
    runner's AlwaysOn scripts, each in its group, then the "Script" dropdown, whose change shows the
    chosen selectable script's group. Returns the runner (its ``inputs`` are the scripts' controls)."""
    from modules import scripts

    runner = scripts.ScriptRunner()
    runner.initialize_scripts(is_img2img=True)
    with gr.Column(elem_id="img2img_script_container"):
        runner.setup_ui()
    dropdown = runner.inputs[0]
    dropdown.elem_id = "script_list"  # the host's elem_id for it
    groups = [script.group for script in runner.selectable_scripts]

    def select_script(index):
        chosen = runner.selectable_scripts[index - 1] if index else None  # None: nothing chosen, as 0
        return [gr.update(visible=script is chosen) for script in runner.selectable_scripts]

    if groups:
        dropdown.change(fn=select_script, inputs=[dropdown], outputs=groups)
    return runner


IMG2IMG_PAGE_SETTINGS = {"width": 64, "height": 64, "denoising_strength": 0.5, "seed": 1234,
                         "sampler_name": "Euler", "cfg_scale": 7.0}


def img2img_from_page(runner, prompt, init_image, steps, *args):
    """The img2img tab's Generate, as modules/img2img.py runs it: the scripts' control values are
    ``p.script_args``; the selected Script's ``run`` or else ``process_images``. Returns the image
    and the infotext (the host's html_info)."""
    from modules import processing, shared
    from modules.call_queue import queue_lock

    if init_image is None:
        return None, "<p data-status='error'>No image for img2img</p>"
    p = processing.StableDiffusionProcessingImg2Img(sd_model=shared.sd_model, prompt=prompt or "",
                                                    steps=int(steps), **IMG2IMG_PAGE_SETTINGS)
    p.init_images = [init_image]
    p.scripts = runner
    p.script_args = tuple(args)
    with queue_lock:
        shared.state.begin(job="img2img")
        try:
            processed = runner.run(p, *args) or processing.process_images(p)
        finally:
            shared.state.end()
    import html

    info = processed.infotexts[0] if processed.infotexts else processed.info
    return processed.images[0], f"<p data-status='done'>{html.escape(str(info))}</p>"


def build_img2img_tab(gr):
    """A minimal img2img tab: prompt, image, steps, the scripts (:func:`build_img2img_scripts`) and a
    Generate button whose inputs are all of those, the scripts' controls last, as the host's (so
    every script control is an input of an event, which gradio 3 needs to make it interactive)."""
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="img2img_prompt")
            init_image = gr.Image(label="Image for img2img", type="pil", elem_id="img2img_image", height=256)
            steps = gr.Slider(1, 150, value=4, step=1, label="Sampling steps", elem_id="img2img_steps")
            runner = build_img2img_scripts(gr)
        with gr.Column():
            generate = gr.Button("Generate", variant="primary", elem_id="img2img_generate")
            result = gr.Image(label="Result", type="pil", interactive=False, elem_id="img2img_result", height=256)
            info = gr.HTML(elem_id="html_info_img2img")
    generate.click(fn=lambda *values: img2img_from_page(runner, *values), inputs=[prompt, init_image, steps,
                                                                                 *runner.inputs],
                   outputs=[result, info])
    return runner


def build_demo(*, img2img: bool = True):
    """The page: a built-in tab, the img2img tab with the scripts' UIs, then every on_ui_tabs tab."""
    install_forge_gradio_shim()
    import gradio as gr
    from modules import script_callbacks

    interfaces = script_callbacks.ui_tabs_callback()
    # System fonts: the default theme would ask Google Fonts, and nothing outside is reachable.
    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])
    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion (stand-in)", theme=theme) as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                gr.Markdown("The stand-in host has no txt2img tab; the extensions' tabs follow.")
            if img2img:
                with gr.TabItem("img2img", id="img2img", elem_id="tab_img2img"):
                    demo.img2img_scripts = build_img2img_tab(gr)
            for interface, label, ifid in interfaces:
                with gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}"):
                    interface.render()
    return demo


class HeadScripts:
    """ASGI middleware: adds ``<script src=...>`` tags before ``</head>`` of the HTML page at "/",
    and serves those scripts at /standin-js/<n>/<name>."""

    def __init__(self, app, files: list[Path]):
        self.app = app
        self.files = list(files)
        self.tags = "".join(
            f'<script type="text/javascript" src="./standin-js/{index}/{path.name}"></script>\n'
            for index, path in enumerate(self.files)
        ).encode("utf-8")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path.startswith("/standin-js/"):
            return await self._script(path, send)
        if path != "/" or scope.get("method") != "GET":
            return await self.app(scope, receive, send)

        started: dict[str, Any] = {}
        body = bytearray()

        async def rewrite(message):
            if message["type"] == "http.response.start":
                started.update(message)
                return
            if message["type"] == "http.response.body":
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                headers = [(k, v) for k, v in started.get("headers", []) if k.lower() != b"content-length"]
                content = bytes(body)
                is_html = any(k.lower() == b"content-type" and b"text/html" in v for k, v in headers)
                if is_html:
                    content = content.replace(b"</head>", self.tags + b"</head>", 1)
                headers.append((b"content-length", str(len(content)).encode()))
                await send({**started, "headers": headers})
                await send({"type": "http.response.body", "body": content})
                return
            await send(message)

        await self.app(scope, receive, rewrite)

    async def _script(self, path: str, send):
        parts = path.split("/")
        try:
            file = self.files[int(parts[2])]
            assert parts[3] == file.name
            content = file.read_bytes()
            status = 200
        except (IndexError, ValueError, AssertionError, OSError):
            content, status = b"not found", 404
        headers = [(b"content-type", b"text/javascript; charset=utf-8"),
                   (b"content-length", str(len(content)).encode()), (b"cache-control", b"no-store")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})


def create_page_app(extension_dirs):
    """The whole page app: the API and progress routes first, gradio mounted at "/" last."""
    import gradio as gr
    from modules import progress
    from modules.api.api import create_api_app

    demo = build_demo()
    demo.queue(64)  # as both hosts call it (webui.py); see the module docstring
    app = create_api_app(demo)
    progress.setup_progress_api(app)
    gr.mount_gradio_app(app, demo, path="/")
    return HeadScripts(app, script_files(extension_dirs)), demo


@dataclass
class PageServer:
    url: str
    server: Any
    thread: threading.Thread
    demo: Any

    @classmethod
    def start(cls, extension_dirs, timeout: float = 60.0) -> "PageServer":
        import uvicorn

        app, demo = create_page_app(extension_dirs)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="standin-page", daemon=True)
        thread.start()
        deadline = time.time() + timeout
        while not server.started and time.time() < deadline and thread.is_alive():
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError("the stand-in page server did not start")
        return cls(f"http://127.0.0.1:{port}", server, thread, demo)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        try:
            self.demo.close()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


__all__ = ["PageServer", "artefacts_dir", "build_demo", "build_img2img_scripts", "build_img2img_tab",
           "create_page_app", "gradio_major", "install_forge_gradio_shim", "script_files"]
