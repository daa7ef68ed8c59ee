"""tests/webui's HTTP checks against the stand-in host, served by uvicorn on loopback."""

from __future__ import annotations

import pytest

from webui.checks import ALL_CHECKS


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda check: check.__name__)
def test_http_against_standin(standin_url, fresh_state, check, tmp_path, monkeypatch):
    from modules import shared

    monkeypatch.setitem(shared.opts.data, "outdir_img2img_samples", str(tmp_path / "img2img-images"))
    check(standin_url)
