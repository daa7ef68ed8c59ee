"""Stand-in for the WebUI's ``launch`` module: the part of its surface that ``install.py`` uses.

In A1111 v1.10.1 and Forge, ``launch.py`` re-exports these from ``modules/launch_utils.py``; they
behave the same here:

- ``args``: parsed from ``sys.argv`` with ``parse_known_args`` at import, as the host does, so
  ``python install.py --skip-install`` sets ``args.skip_install``. (The host runs install.py with no
  arguments, so there it is always False; the host skips install.py itself under --skip-install.)
- ``is_installed(package)``: distribution metadata first, then ``importlib.util.find_spec``.
- ``run(command, ...)``: ``subprocess.run(shell=True)``; output captured unless ``live``; a non-zero
  exit raises RuntimeError carrying the command, the exit code and the captured output.
- ``run_pip(command, desc=None, live=...)``: a no-op with ``--skip-install``; otherwise runs
  ``"{python}" -m pip {command} --prefer-binary`` plus `` --index-url $INDEX_URL`` when set.

Test hook of this stand-in only (the real host has nothing like it): when the environment variable
``VIDGUIDE_TEST_PIP_LOG`` names a file, ``run_pip`` appends the full command line it would run to
that file, one per line, and does not run pip.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys

parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--skip-install", action="store_true")
args, _ = parser.parse_known_args()

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")
default_command_live = os.environ.get("WEBUI_LAUNCH_LIVE_OUTPUT") == "1"

PIP_LOG_VARIABLE = "VIDGUIDE_TEST_PIP_LOG"


def run(command, desc=None, errdesc=None, custom_env=None, live: bool = default_command_live) -> str:
    if desc is not None:
        print(desc)
    run_kwargs = {
        "args": command,
        "shell": True,
        "env": os.environ if custom_env is None else custom_env,
        "encoding": "utf8",
        "errors": "ignore",
    }
    if not live:
        run_kwargs["stdout"] = run_kwargs["stderr"] = subprocess.PIPE
    result = subprocess.run(**run_kwargs)
    if result.returncode != 0:
        error_bits = [
            f"{errdesc or 'Error running command'}.",
            f"Command: {command}",
            f"Error code: {result.returncode}",
        ]
        if result.stdout:
            error_bits.append(f"stdout: {result.stdout}")
        if result.stderr:
            error_bits.append(f"stderr: {result.stderr}")
        raise RuntimeError("\n".join(error_bits))
    return result.stdout or ""


def is_installed(package) -> bool:
    try:
        importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return True


def run_pip(command, desc=None, live=default_command_live):
    if args.skip_install:
        return None
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    full_command = f'"{python}" -m pip {command} --prefer-binary{index_url_line}'
    log_path = os.environ.get(PIP_LOG_VARIABLE)
    if log_path:
        print(f"Installing {desc}")
        with open(log_path, "a", encoding="utf8") as log:
            log.write(full_command + "\n")
        return ""
    return run(full_command, desc=f"Installing {desc}", errdesc=f"Couldn't install {desc}", live=live)
