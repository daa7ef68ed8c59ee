"""The stand-in WebUI page: extension tabs on a gradio 3.41 page, served by uvicorn on loopback.

What it keeps of the real host (modules/ui.py, ui_gradio_extensions.py, webui.py):
- the tabs come from ``script_callbacks.ui_tabs_callback()`` and each is rendered inside
  ``gr.Tabs(elem_id="tabs")`` as ``gr.TabItem(label, id=ifid, elem_id=f"tab_{ifid}")``, after a
  built-in tab, so a test has to click its way to the extension's tab as a user does;
- every page gets the host's scripts, then each extension's ``javascript/*.js``, as
  ``<script>`` tags before ``</head>`` (the host patches gradio's template response; here a
  small ASGI middleware rewrites the page's HTML, leaving gradio itself untouched);
- the queue is on with 64 workers, as the host's ``demo.queue(64)``;
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
HOST_SCRIPTS = ("script.js", "progressbar.js")  # the order the host loads them in: script.js first


def script_files(extension_dirs) -> list[Path]:
    files = [HOST_JAVASCRIPT / name for name in HOST_SCRIPTS]
    for extension_dir in extension_dirs:
        files += sorted((Path(extension_dir) / "javascript").glob("*.js"))
    return files


def build_demo():
    """The page: a built-in tab, then every on_ui_tabs tab."""
    import gradio as gr
    from modules import script_callbacks

    interfaces = script_callbacks.ui_tabs_callback()
    # System fonts: the default theme would ask Google Fonts, and nothing outside is reachable.
    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])
    with gr.Blocks(analytics_enabled=False, title="Stable Diffusion (stand-in)", theme=theme) as demo:
        with gr.Tabs(elem_id="tabs"):
            with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                gr.Markdown("The stand-in host has no txt2img tab; the extensions' tabs follow.")
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
    demo.queue(concurrency_count=64)
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


__all__ = ["PageServer", "build_demo", "create_page_app", "script_files"]
