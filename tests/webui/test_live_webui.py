"""The same behaviours against a running WebUI (A1111 v1.10.1 with this extension, started with
--api), at VIDGUIDE_WEBUI_URL; skipped when it is unset."""

from __future__ import annotations

import os

import pytest

from .checks import ALL_CHECKS

BASE_URL = os.environ.get("VIDGUIDE_WEBUI_URL", "").rstrip("/")

pytestmark = [
    pytest.mark.webui,
    pytest.mark.skipif(not BASE_URL, reason="set VIDGUIDE_WEBUI_URL to a WebUI started with --api"),
]


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda check: check.__name__)
def test_live_webui(check):
    check(BASE_URL)
