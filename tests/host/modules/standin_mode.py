"""Which host the stand-in plays: AUTOMATIC1111 v1.10.1 (the default) or Forge 2.0.1v1.10.1.

Chosen once per process by the environment variable ``VIDGUIDE_STANDIN_HOST`` (``a1111`` or
``forge``; subprocesses inherit it). Not a host module: only the stand-in's own modules read it,
the extension detects Forge the way it would on a real host (``import modules_forge``).
"""

import os

_VALUE = os.environ.get("VIDGUIDE_STANDIN_HOST", "a1111").strip().lower() or "a1111"
if _VALUE not in ("a1111", "forge"):
    raise ImportError(f"VIDGUIDE_STANDIN_HOST={_VALUE!r}: expected 'a1111' (the default) or 'forge'")

FORGE = _VALUE == "forge"
NAME = _VALUE
