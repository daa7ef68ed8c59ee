"""tests/webui's HTTP checks against the stand-in host, served by uvicorn on loopback."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from webui.checks import ALL_CHECKS


@pytest.fixture(scope="module")
def standin_url(webui):
    import uvicorn
    from modules.api.api import create_api_app

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_api_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda check: check.__name__)
def test_http_against_standin(standin_url, fresh_state, check, tmp_path, monkeypatch):
    from modules import shared

    monkeypatch.setitem(shared.opts.data, "outdir_img2img_samples", str(tmp_path / "img2img-images"))
    check(standin_url)
