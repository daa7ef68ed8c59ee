"""Host settings the extension reads: command-line options (preload.py), folders, logging."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ..paths import parse_roots

LOGGER_NAME = "vidguide"


def cmd_option(name: str, default):
    from modules import shared

    return getattr(getattr(shared, "cmd_opts", None), name, default)


def data_path() -> Path:
    from modules import paths_internal

    return Path(paths_internal.data_path)


def models_path() -> Path:
    from modules import paths_internal

    return Path(paths_internal.models_path)


def device() -> Optional[str]:
    """The WebUI's torch device (``modules.devices.device``), or None to let the runner pick."""
    try:
        from modules import devices
    except ImportError:
        return None
    found = getattr(devices, "device", None)
    return str(found) if found is not None else None


def torch_gc() -> None:
    """The host's torch_gc after a released model (it also covers MPS/XPU caches)."""
    try:
        from modules import devices
    except ImportError:
        return
    collect = getattr(devices, "torch_gc", None)
    if callable(collect):
        collect()


def allowed_roots() -> list[Path]:
    """--vidguide-allowed-roots, or by default the WebUI's outputs and a vidguide-inputs folder."""
    configured = parse_roots(cmd_option("vidguide_allowed_roots", ""))
    if configured:
        return configured
    return [data_path() / "outputs", data_path() / "vidguide-inputs"]


def configure_logging() -> logging.Logger:
    """The "vidguide" logger at --vidguide-loglevel; it prints itself only where nothing else would."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(str(cmd_option("vidguide_loglevel", "INFO")).upper())
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return logger


__all__ = ["allowed_roots", "cmd_option", "configure_logging", "data_path", "device", "models_path", "torch_gc"]
