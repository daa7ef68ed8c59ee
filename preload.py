"""Command-line options of sd-webui-vidguide, added to the WebUI's argparse parser.

The WebUI calls ``preload(parser)`` (``modules/shared_cmd_options.py`` via
``script_loading.preload_extensions``) before it parses its command line; the values then appear
as ``shared.cmd_opts.vidguide_loglevel``, ``shared.cmd_opts.vidguide_allowed_roots`` and
``shared.cmd_opts.vidguide_max_upload_mb``.

The host preloads once per process, but a second copy of this extension (cloned twice under two
folder names, or once in extensions/ and once in extensions-builtin/) calls ``preload`` again on the
same parser, and argparse raises on a duplicate option: the second call therefore adds nothing.
"""

from __future__ import annotations

import argparse
import os

GROUP_TITLE = "sd-webui-vidguide"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_MAX_UPLOAD_MB = 2048


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of megabytes, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1 (megabytes), got {value}")
    return value


def preload(parser: argparse.ArgumentParser) -> None:
    # Already added by an earlier call (another copy of the extension): argparse would raise.
    if parser.get_default("vidguide_loglevel") is not None:
        return

    group = parser.add_argument_group(
        GROUP_TITLE, "Options of the sd-webui-vidguide extension (motion-aware video)."
    )
    group.add_argument(
        "--vidguide-loglevel",
        type=str.upper,  # accept "debug" as well as "DEBUG"
        choices=LOG_LEVELS,
        default="INFO",
        help="level of the 'vidguide' logger (default: INFO)",
    )
    group.add_argument(
        "--vidguide-allowed-roots",
        type=str,
        default="",
        metavar=f"DIR[{os.pathsep}DIR...]",
        help=(
            f"'{os.pathsep}'-separated directories that API callers may read input videos from and "
            "write outputs to; paths outside them are refused. Default (empty): the WebUI's outputs "
            "folder and a 'vidguide-inputs' folder in the WebUI's data directory"
        ),
    )
    group.add_argument(
        "--vidguide-max-upload-mb",
        type=_positive_int,
        default=DEFAULT_MAX_UPLOAD_MB,
        metavar="MB",
        help=f"largest video upload accepted, in megabytes (default: {DEFAULT_MAX_UPLOAD_MB})",
    )
