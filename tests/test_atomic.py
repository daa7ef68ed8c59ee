from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib_vidguide.atomic import save_png_atomic, write_bytes_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "frame.png"
    save_png_atomic(target, np.full((4, 4, 3), 7, np.uint8))

    import os

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        save_png_atomic(target, np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["frame.png"]
    assert np.asarray(Image.open(target)).max() == 7


def test_bytes_land_whole_and_parents_are_created(tmp_path):
    path = write_bytes_atomic(tmp_path / "a" / "b.bin", b"x" * 1000)
    assert path.read_bytes() == b"x" * 1000
