"""X/Y/Z plot axes for the main guidance settings (strength, schedule, flow, weight map, warp).

The WebUI's X/Y/Z plot is a script in its root folder; extensions add axes by finding its
module among the loaded scripts and appending to ``axis_options`` before the UI is built
(``on_before_ui``). An axis stores its value in ``p._vg_xyz``, which the AlwaysOn script
applies over its own args for that cell; guidance must be enabled in the script.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..schedules import PRESETS
from ..settings import FLOW_METHODS, WARP_SPACES, WEIGHT_MODES

logger = logging.getLogger("vidguide")

AXES: tuple[tuple[str, str, type, Optional[tuple]], ...] = (
    ("[VidGuide] Strength", "strength", float, None),
    ("[VidGuide] Schedule", "schedule", str, tuple(PRESETS)),
    ("[VidGuide] Flow", "flow_method", str, FLOW_METHODS),
    ("[VidGuide] Weight map", "weight_mode", str, WEIGHT_MODES),
    ("[VidGuide] Warp in", "warp_space", str, WARP_SPACES),
)


def find_xyz_module() -> Optional[Any]:
    from modules import scripts

    for data in scripts.scripts_data:
        if getattr(data.script_class, "__module__", "") in ("xyz_grid.py", "xy_grid.py") and hasattr(data, "module"):
            return data.module
    return None


def _apply(setting: str):
    def apply(p: Any, value: Any, values: Any) -> None:
        # A new dict per cell: the plot shallow-copies p, so mutating a shared dict would leak.
        p._vg_xyz = {**getattr(p, "_vg_xyz", {}), setting: value}

    return apply


def register_axes() -> None:
    """script_callbacks.on_before_ui: add the axes once (the callback runs again on Reload UI)."""
    module = find_xyz_module()
    if module is None:
        logger.info("[+] VidGuide: no X/Y/Z plot script found; no axes added")
        return
    existing = {option.label for option in module.axis_options}
    for label, setting, value_type, choices in AXES:
        if label in existing:
            continue
        option_class = getattr(module, "AxisOptionImg2Img", module.AxisOption)
        extra = {"choices": (lambda values=choices: list(values))} if choices else {}
        module.axis_options.append(option_class(label, value_type, _apply(setting), **extra))


def overrides(p: Any) -> dict:
    return dict(getattr(p, "_vg_xyz", {}) or {})
