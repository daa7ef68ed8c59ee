"""Paths from API callers stay inside allowed roots (after resolving symlinks and '..')."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from .errors import UserInputError


class PathNotAllowedError(UserInputError):
    """A caller-supplied path outside every allowed root."""

    default_status = 403


def parse_roots(text: str) -> list[Path]:
    """Roots from an ``os.pathsep``-separated option value; empty parts are ignored."""
    return [Path(part).expanduser() for part in (text or "").split(os.pathsep) if part.strip()]


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *, what: str = "file") -> Path:
    """The real path of ``path`` if it lies inside one of ``roots``; else a clear error."""
    text = os.fspath(path)
    if ("\x00" if isinstance(text, str) else b"\x00") in text:
        # os.path.realpath would raise a bare ValueError("embedded null byte")
        raise ValueError(f"the {what} path {text!r} contains a NUL character, which no file name can hold")
    roots = [Path(os.path.realpath(root)) for root in roots]
    real = Path(os.path.realpath(text))
    for root in roots:
        if real == root or root in real.parents:
            return real
    listed = ", ".join(str(root) for root in roots) or "(none)"
    raise PathNotAllowedError(
        f"the {what} path {os.fspath(path)!r} is outside the folders the API may use ({listed}); "
        "put it in one of them, send the video inline as a base64 data URL, or start the WebUI with "
        "--vidguide-allowed-roots to allow another folder"
    )
