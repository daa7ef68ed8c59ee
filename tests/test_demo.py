"""`make demo` end to end (the same function, into a temporary folder)."""

from __future__ import annotations

import json

from lib_vidguide.demo import run_demo
from lib_vidguide.video_io import probe


def test_demo_writes_both_clips_a_contact_sheet_and_a_report(tmp_path, capsys):
    report = run_demo(tmp_path)
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "RANDOM WEIGHTS" in (tmp_path / "report.md").read_text()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["warp_error_x1000"] == report["warp_error_x1000"]
    for name in ("source", "unguided", "guided"):
        info = probe(tmp_path / f"{name}.mp4")
        assert (info.width, info.height, info.frame_count) == (128, 128, 16)
    errors = report["warp_error_x1000"]
    assert errors["guided"] < errors["unguided"], errors
    assert report["warp_error_x1000_source_itself"] < errors["guided"]
    from PIL import Image

    sheet = Image.open(tmp_path / "contact_sheet.png")
    assert sheet.size[1] == 4 * 128
    assert report["seconds"]["total"] < 300
