"""Per-generation CFG hooks: registered for one generation, removed in ``finally``.

The two callbacks are module-level functions so that ``remove_callbacks_for_function``
can also remove registrations leaked by a generation that failed before cleanup
(HOST_A1111.md §9). Each call checks that the denoiser's ``p`` carries the active guidance
(``p._vg_guidance``), so a leaked registration never touches someone else's generation.
Only ``on_cfg_denoiser`` and ``on_cfg_after_cfg`` are used: Forge never calls ``on_cfg_denoised``.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from ..guidance import StepGuidance
from . import compat

logger = logging.getLogger("vidguide")

_active: Optional[StepGuidance] = None
_active_batch_size: int = 1
_pending = False


def _on_cfg_denoiser(params: Any) -> None:
    global _pending
    _pending = False
    guidance = _active
    if guidance is None:
        return
    denoiser = getattr(params, "denoiser", None)
    p = getattr(denoiser, "p", None)
    if p is None or getattr(p, "_vg_guidance", None) is not guidance:
        return
    if guidance.conventions is None:
        guidance.conventions = compat.sampler_conventions(denoiser, p)
    rows = _active_batch_size
    # The last B rows are the per-image latents: A1111 puts the cond rows first (HOST_A1111.md
    # §1.4), Forge passes only the B rows (§6.3). Forge's DDIM shows sigma and k-diffusion x here.
    guidance.observe_input(params.x[-rows:], params.sigma[-rows:])
    _pending = True


def _on_cfg_after_cfg(params: Any) -> None:
    global _pending
    if not _pending or _active is None:
        return
    _pending = False
    guidance = _active
    try:
        params.x = guidance.apply(params.x)
    except Exception:
        # The host would print this once per step and carry on; stop guiding this run instead.
        logger.exception("[-] VidGuide: flow guidance failed and is off for the rest of this generation")
        deactivate(guidance)


def remove_registrations() -> None:
    from modules import script_callbacks

    script_callbacks.remove_callbacks_for_function(_on_cfg_denoiser)
    script_callbacks.remove_callbacks_for_function(_on_cfg_after_cfg)


def activate(p: Any, guidance: StepGuidance) -> None:
    """Guide the next sampling of ``p``; replaces any previous activation."""
    global _active, _active_batch_size, _pending
    from modules import script_callbacks

    remove_registrations()
    _active = guidance
    _active_batch_size = max(1, int(getattr(p, "batch_size", 1) or 1))
    _pending = False
    p._vg_guidance = guidance
    script_callbacks.on_cfg_denoiser(_on_cfg_denoiser, name="vidguide_flow_guidance")
    script_callbacks.on_cfg_after_cfg(_on_cfg_after_cfg, name="vidguide_flow_guidance")


def deactivate(guidance: Optional[StepGuidance] = None) -> None:
    """Remove the hooks; with ``guidance`` given, only if it is the active one."""
    global _active, _pending
    if guidance is not None and guidance is not _active:
        return
    _active = None
    _pending = False
    remove_registrations()


def active() -> Optional[StepGuidance]:
    return _active
