"""Test set-up: the host stand-in on sys.path (playing A1111, or Forge with
VIDGUIDE_STANDIN_HOST=forge), one thread, and a loaded WebUI "session"."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST = Path(__file__).resolve().parent / "host"
if str(HOST) not in sys.path:
    sys.path.insert(0, str(HOST))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def pytest_report_header(config):
    from modules import standin_mode

    return f"host stand-in: {standin_mode.NAME} (VIDGUIDE_STANDIN_HOST; tests/host/README.md)"


def pytest_configure(config):
    import cv2
    import torch

    # One thread each, as FLOW.md and PIPELINES.md measured: stable on the 2 shared cores.
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


@pytest.fixture(scope="session")
def webui():
    """The stand-in host with the tiny model loaded and this extension's scripts registered."""
    from host_session import HostSession

    return HostSession.start(REPO)


@pytest.fixture
def fresh_state(webui):
    webui.reset()
    yield webui
    webui.reset()


@pytest.fixture(scope="session")
def standin_url(webui):
    """The stand-in WebUI's API (--nowebui mode, this extension's routes included) served by
    uvicorn on a loopback port."""
    import socket
    import threading
    import time

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
