"""The host boundary: only lib_vidguide/webui may import the WebUI's modules, launch or gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST_PACKAGES = {"modules", "launch", "gradio", "modules_forge"}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_host_import_outside_the_webui_adapter():
    offenders = {}
    for path in (REPO / "lib_vidguide").rglob("*.py"):
        if "webui" in path.relative_to(REPO / "lib_vidguide").parts:
            continue
        found = _imported_top_levels(path) & HOST_PACKAGES
        if found:
            offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}


def test_the_check_above_would_see_a_host_import(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from modules import shared\n    import gradio as gr\n", encoding="utf-8")
    assert _imported_top_levels(sample) & HOST_PACKAGES == {"modules", "gradio"}


def test_importing_the_library_loads_no_host_and_no_heavy_module():
    """Run in a fresh interpreter with the stand-in host importable: nothing may pull it in."""
    library = [
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for p in (REPO / "lib_vidguide").rglob("*.py")
        if "webui" not in p.parts and p.name != "__main__.py"
    ]
    code = (
        "import sys, importlib\n"
        f"sys.path[:0] = [{str(REPO)!r}, {str(REPO / 'tests' / 'host')!r}]\n"
        "import lib_vidguide\n"
        "light = sorted(m for m in ('torch', 'cv2', 'av', 'diffusers', 'transformers') if m in sys.modules)\n"
        f"for name in {library!r}: importlib.import_module(name)\n"
        "host = sorted(m for m in ('modules', 'launch', 'gradio') if m in sys.modules)\n"
        "print(light, host)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert output == "[] []", output


def test_entry_scripts_are_thin():
    for path in (REPO / "scripts").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        statements = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr))]
        assert statements == [], f"{path.name} should only import from lib_vidguide"
