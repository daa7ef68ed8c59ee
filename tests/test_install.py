"""install.py and preload.py, run the way the WebUI runs them.

install.py runs as the host runs it (``python install.py`` in a WebUI root with the stand-in
``launch`` on PYTHONPATH), against this venv (everything present) and against a bare venv
(everything missing); pip calls are recorded through the stand-in's VIDGUIDE_TEST_PIP_LOG hook.
The constraints file and the shell quoting are checked with real ``pip install --dry-run --no-index``
runs (offline, about a second each).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOST = Path(__file__).resolve().parent / "host"
DIFFUSERS_RANGE = "diffusers>=0.29.0,<0.32"
ONNXRUNTIME_RANGE = "onnxruntime>=1.16,<1.24"
HOST_STACK = {  # an A1111 v1.10.1 environment as pip leaves it (HOST_A1111.md §6.1)
    "torch": "2.1.2+cu121",
    "torchvision": "0.16.2+cu121",
    "numpy": "1.26.2",
    "Pillow": "9.5.0",
    "safetensors": "0.4.2",
    "transformers": "4.30.2",
    "tokenizers": "0.13.3",
    "huggingface_hub": "0.36.2",
    "accelerate": "0.21.0",
    "protobuf": "3.20.0",
    "gradio": "3.41.2",
    "gradio_client": "0.5.0",
    "fastapi": "0.94.0",
    "pydantic": "1.10.27",
    "starlette": "0.26.1",
    "httpx": "0.24.1",
    "opencv-python": "4.10.0.84",
    "scipy": "1.11.4",
    "scikit-image": "0.21.0",
}


def _load_file_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def installer():
    return _load_file_module("vidguide_install_under_test", REPO / "install.py")


@pytest.fixture
def stand_in_launch(monkeypatch, tmp_path):
    """The stand-in ``launch`` module, recording pip commands into tmp_path/pip.log."""
    import launch

    assert Path(launch.__file__).parent == HOST, "the stand-in must shadow any other 'launch'"
    log = tmp_path / "pip.log"
    monkeypatch.setenv("VIDGUIDE_TEST_PIP_LOG", str(log))
    monkeypatch.setattr(launch.args, "skip_install", False)
    return launch, log


def _logged_commands(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [shlex.split(line) for line in log.read_text().splitlines() if line.strip()]


def _run_install_script(python: str, cwd: Path, pythonpath: list[Path], pip_log: Path, *args: str):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    env["VIDGUIDE_TEST_PIP_LOG"] = str(pip_log)
    return subprocess.run(
        [python, str(REPO / "install.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory):
    """A venv with nothing installed, not even pip; ``packaging`` is lent through PYTHONPATH
    because every WebUI environment has it."""
    root = tmp_path_factory.mktemp("bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    lent = root / "lent"
    lent.mkdir()
    import packaging

    (lent / "packaging").symlink_to(Path(packaging.__file__).parent, target_is_directory=True)
    python = root / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    return str(python), lent


# --- install.py as the host runs it ----------------------------------------------------------


def test_host_run_in_complete_venv_requests_nothing(tmp_path):
    webui_root = tmp_path / "webui"
    webui_root.mkdir()
    log = tmp_path / "pip.log"
    result = _run_install_script(sys.executable, webui_root, [HOST], log)
    assert result.returncode == 0, result.stderr
    assert _logged_commands(log) == []
    assert result.stdout == ""  # the host prints install.py's stdout at every start: stay quiet


def test_host_run_in_bare_venv_requests_the_four_packages_through_run_pip(tmp_path, bare_venv):
    python, lent = bare_venv
    webui_root = tmp_path / "webui"
    webui_root.mkdir()
    log = tmp_path / "pip.log"
    result = _run_install_script(python, webui_root, [HOST, lent], log)
    assert result.returncode == 0, result.stderr

    commands = _logged_commands(log)
    requested = [command[6] for command in commands]
    assert requested == [DIFFUSERS_RANGE, "av>=12", "opencv-python-headless", ONNXRUNTIME_RANGE]
    for command in commands:
        # The stand-in's run_pip line, as launch_utils builds it, with our -c file before the
        # requirement: "{python}" -m pip install -c <file> <requirement> --prefer-binary
        assert command[:5] == [python, "-m", "pip", "install", "-c"]
        assert command[7:] == ["--prefer-binary"]
        assert not Path(command[5]).exists(), "the temporary constraints file must be removed"
    assert f"Installing {DIFFUSERS_RANGE} for sd-webui-vidguide" in result.stdout


def test_host_run_with_skip_install_does_nothing(tmp_path, bare_venv):
    python, lent = bare_venv
    log = tmp_path / "pip.log"
    result = _run_install_script(python, tmp_path, [HOST, lent], log, "--skip-install")
    assert result.returncode == 0, result.stderr
    assert _logged_commands(log) == []
    assert result.stdout == ""


def test_outside_the_webui_in_complete_venv_is_quiet(tmp_path):
    log = tmp_path / "pip.log"
    result = _run_install_script(sys.executable, tmp_path, [], log)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert _logged_commands(log) == []


def test_outside_the_webui_failure_names_package_and_exits_1(tmp_path, bare_venv):
    # No launch module: install.py falls back to "<python> -m pip", which this bare venv lacks.
    python, lent = bare_venv
    result = _run_install_script(python, tmp_path, [lent], tmp_path / "pip.log")
    assert result.returncode == 1
    assert f"using {python} -m pip" in result.stdout
    assert f"[-] VidGuide: could not install {DIFFUSERS_RANGE}" in result.stdout
    assert f'"{python}" -m pip install "{DIFFUSERS_RANGE}"' in result.stdout
    assert "No module named pip" in result.stdout
    assert result.stdout.count("[-] VidGuide: could not install") == 4  # one failure does not stop the rest
    assert "Traceback" not in result.stderr


# --- the decisions, from fabricated environments ---------------------------------------------


def test_missing_diffusers_requests_the_range(installer):
    assert DIFFUSERS_RANGE in installer.requirements_to_install(HOST_STACK)


@pytest.mark.parametrize("version", ["0.27.2", "0.28.2", "0.32.0", "0.33.0", "0.32.0.dev0"])
def test_out_of_range_diffusers_is_reinstalled_in_range(installer, version):
    wanted = installer.requirements_to_install({**HOST_STACK, "diffusers": version})
    assert DIFFUSERS_RANGE in wanted


@pytest.mark.parametrize("version", ["0.29.0", "0.31.0", "0.31.0.dev0"])
def test_in_range_diffusers_is_left_alone(installer, version):
    wanted = installer.requirements_to_install({**HOST_STACK, "diffusers": version})
    assert not any(requirement.startswith("diffusers") for requirement in wanted)


def test_complete_a1111_environment_needs_only_ours(installer):
    # A1111 ships opencv-python, so only diffusers, PyAV and onnxruntime are missing.
    assert installer.requirements_to_install(HOST_STACK) == [DIFFUSERS_RANGE, "av>=12", ONNXRUNTIME_RANGE]


@pytest.mark.parametrize(
    "opencv", ["opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv_contrib_python"]
)
def test_any_opencv_build_prevents_headless(installer, opencv):
    stack = {key: value for key, value in HOST_STACK.items() if key != "opencv-python"}
    assert "opencv-python-headless" not in installer.requirements_to_install({**stack, opencv: "4.10.0.84"})


def test_no_opencv_requests_headless_but_a_bare_cv2_module_counts(installer):
    stack = {key: value for key, value in HOST_STACK.items() if key != "opencv-python"}
    assert "opencv-python-headless" in installer.requirements_to_install(stack)
    assert "opencv-python-headless" not in installer.requirements_to_install({**stack, "cv2": None})


def test_onnxruntime_range_and_gpu_builds(installer):
    assert ONNXRUNTIME_RANGE in installer.requirements_to_install(HOST_STACK)
    assert ONNXRUNTIME_RANGE in installer.requirements_to_install({**HOST_STACK, "onnxruntime": "1.24.1"})
    assert ONNXRUNTIME_RANGE not in installer.requirements_to_install({**HOST_STACK, "onnxruntime": "1.23.2"})
    # A GPU build provides the same package: installing the CPU wheel over it would break it.
    plan = installer.plan_install({**HOST_STACK, "onnxruntime-gpu": "1.24.0"})
    assert ONNXRUNTIME_RANGE not in plan.requirements
    assert any("onnxruntime-gpu==1.24.0" in note for note in plan.notes)


def test_pyav_floor(installer):
    assert "av>=12" in installer.requirements_to_install({**HOST_STACK, "av": "11.0.0"})
    assert "av>=12" not in installer.requirements_to_install({**HOST_STACK, "av": "16.0.1"})


def test_unreadable_version_is_left_alone_with_a_note(installer):
    plan = installer.plan_install({**HOST_STACK, "diffusers": None})
    assert DIFFUSERS_RANGE not in plan.requirements
    assert any("cannot read the version of the installed diffusers" in note for note in plan.notes)


def test_a_host_pin_on_diffusers_wins(installer, tmp_path):
    # Forge pins diffusers; replacing a host pin would make the host reinstall it at every start.
    (tmp_path / "requirements_versions.txt").write_text(
        "setuptools==69.5.1  # temp fix\nPillow==9.5.0\ntorch\ndiffusers==0.33.0\n"
    )
    pins = installer.host_requirement_pins(str(tmp_path))
    assert pins == {"setuptools": "69.5.1", "Pillow": "9.5.0", "diffusers": "0.33.0"}
    plan = installer.plan_install({**HOST_STACK, "diffusers": "0.33.0"}, pins)
    assert DIFFUSERS_RANGE not in plan.requirements
    assert any("the WebUI pins diffusers==0.33.0" in note for note in plan.notes)
    # A pin on another version does not protect what is installed now.
    other_pin = {"diffusers": "0.31.0"}
    environment = {**HOST_STACK, "diffusers": "0.33.0"}
    assert DIFFUSERS_RANGE in installer.requirements_to_install(environment, other_pin)
    assert installer.host_requirement_pins(str(tmp_path / "missing")) == {}


def test_requirements_never_touch_host_packages(installer):
    for environment in ({}, HOST_STACK, {**HOST_STACK, "diffusers": "0.27.2", "onnxruntime": "1.30.0"}):
        wanted = installer.requirements_to_install(environment)
        names = {installer.canonical_name(re.split(r"[<>=!~ ]", requirement)[0]) for requirement in wanted}
        assert names <= {"diffusers", "av", "opencv-python-headless", "onnxruntime"}
        assert "torch" not in names and "torchvision" not in names


def test_constraints_pin_exactly_the_installed_host_packages(installer):
    ours = {"diffusers": "0.27.2", "av": "11", "onnxruntime": "1.24.0", "opencv-python-headless": "4.11.0.86"}
    environment = {**HOST_STACK, **ours, "requests": "2.32.3"}
    constraints = installer.constraints_for(environment)
    pinned = {line.split("==")[0]: line.split("==")[1] for line in constraints}
    canonical = {installer.canonical_name(name): version for name, version in pinned.items()}
    assert canonical == {installer.canonical_name(name): version for name, version in HOST_STACK.items()}
    assert canonical["torch"] == "2.1.2+cu121"  # local version labels kept: pip matches them exactly
    assert not {*ours, "requests"} & set(canonical)
    assert installer.constraints_for({}) == []


def test_constraints_skip_versions_pip_cannot_parse(installer):
    constraints = installer.constraints_for({"numpy": "1.26.2", "scipy": "not a version", "gradio": None})
    assert constraints == ["numpy==1.26.2"]


# --- the install step itself, in-process -----------------------------------------------------


def test_skip_install_runs_no_pip_at_all(installer, stand_in_launch, monkeypatch):
    launch, log = stand_in_launch
    monkeypatch.setattr(launch.args, "skip_install", True)
    launch.run_pip("install something", desc="something")  # the host's own no-op
    assert _logged_commands(log) == []
    # install.py does not even call run_pip (nor write a constraints file) under --skip-install.
    calls = []
    monkeypatch.setattr(launch, "run_pip", lambda *args, **kwargs: calls.append(args))
    output = io.StringIO()
    with redirect_stdout(output):
        assert installer.run_install(launch, [], installed_versions={}) == 0
    assert calls == []
    assert output.getvalue() == ""


def test_run_pip_gets_the_constraints_while_they_exist(installer, stand_in_launch, monkeypatch):
    launch, log = stand_in_launch
    seen_constraints: list[str] = []
    original_run_pip = launch.run_pip

    def run_pip_reading_constraints(command, desc=None, live=False):
        arguments = shlex.split(command)
        seen_constraints.extend(Path(arguments[arguments.index("-c") + 1]).read_text().split())
        return original_run_pip(command, desc=desc, live=live)

    monkeypatch.setattr(launch, "run_pip", run_pip_reading_constraints)
    with redirect_stdout(io.StringIO()):
        failures = installer.run_install(launch, [], installed_versions={**HOST_STACK, "diffusers": "0.33.0"})
    assert failures == 0
    assert [command[6] for command in _logged_commands(log)] == [DIFFUSERS_RANGE, "av>=12", ONNXRUNTIME_RANGE]
    expected = installer.constraints_for(HOST_STACK)
    assert seen_constraints == expected * 3 and "numpy==1.26.2" in expected


def test_host_failure_is_reported_not_raised(installer, stand_in_launch, monkeypatch):
    launch, _ = stand_in_launch

    def failing_run_pip(command, desc=None, live=False):
        raise RuntimeError(
            "Couldn't install diffusers.\nError code: 1\nstderr: ERROR: ResolutionImpossible\n"
            "    The user requested (constraint) huggingface-hub==0.20.3"
        )

    monkeypatch.setattr(launch, "run_pip", failing_run_pip)
    output = io.StringIO()
    with redirect_stdout(output):
        environment = {**HOST_STACK, "av": "16.0.1", "onnxruntime": "1.23.2"}
        failures = installer.run_install(launch, [], installed_versions=environment)
    assert failures == 1
    text = output.getvalue()
    assert f"[-] VidGuide: could not install {DIFFUSERS_RANGE}" in text
    assert "(constraint) huggingface-hub==0.20.3" in text  # pip's reason is shown
    assert f'-m pip install "{DIFFUSERS_RANGE}"' in text


def test_fallback_without_launch_uses_this_python_and_the_same_constraints(installer, monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        constraints = Path(command[command.index("-c") + 1]).read_text().split()
        calls.append((command, constraints))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(installer.subprocess, "run", fake_run)
    monkeypatch.delenv("INDEX_URL", raising=False)
    with redirect_stdout(io.StringIO()) as output:
        environment = {**HOST_STACK, "diffusers": "0.31.0", "av": "16.0.1"}
        failures = installer.run_install(None, [], installed_versions=environment)
    assert failures == 0
    (command, constraints), = calls
    assert command[:5] == [sys.executable, "-m", "pip", "install", "-c"]
    assert command[6:] == [ONNXRUNTIME_RANGE, "--prefer-binary"]
    assert constraints == installer.constraints_for(HOST_STACK)
    assert f"using {sys.executable} -m pip" in output.getvalue()

    calls.clear()
    with redirect_stdout(io.StringIO()):
        assert installer.run_install(None, ["--skip-install"], installed_versions={}) == 0
    assert calls == []


# --- real pip: the constraints file binds, and the quoting survives the host's shell ---------


def _pip_supports_dry_run() -> bool:
    from pip import __version__ as pip_version
    from packaging.version import Version

    return Version(pip_version) >= Version("22.2")


def _write_probe_wheel(folder: Path, requires: str) -> None:
    """A wheel whose only content is metadata asking for ``requires``."""
    dist_info = "vg_probe-1.0.dist-info"
    with zipfile.ZipFile(folder / "vg_probe-1.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("vg_probe.py", "")
        wheel.writestr(
            f"{dist_info}/METADATA",
            f"Metadata-Version: 2.1\nName: vg-probe\nVersion: 1.0\nRequires-Dist: {requires}\n",
        )
        wheel.writestr(
            f"{dist_info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr(f"{dist_info}/RECORD", "")


@pytest.mark.skipif(not _pip_supports_dry_run(), reason="pip install --dry-run needs pip 22.2")
def test_real_pip_refuses_to_move_a_pinned_package(installer, tmp_path):
    installed = installer.read_installed_versions(
        installer.packages_to_check(), installer.is_installed_like_host
    )
    if "numpy" not in installed:
        pytest.skip("numpy is not installed here")
    constraints = installer.write_constraints_file(installer.constraints_for(installed))
    try:
        _write_probe_wheel(tmp_path, "numpy>=99")  # wants numpy moved
        result = subprocess.run(
            [sys.executable, "-m", "pip", "--isolated", "install", "--dry-run", "--no-index",
             "--find-links", str(tmp_path), "-c", constraints, "vg-probe"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        os.unlink(constraints)
    assert result.returncode != 0
    # pip read our file and names the pin as the reason (without it, it would only say that no
    # numpy>=99 exists).
    assert f"(constraint) numpy=={installed['numpy']}" in result.stdout + result.stderr


@pytest.mark.skipif(not _pip_supports_dry_run(), reason="pip install --dry-run needs pip 22.2")
def test_real_pip_through_the_host_shell_accepts_our_quoting(installer, stand_in_launch, monkeypatch):
    # The stand-in's run_pip runs through the shell like the host's: unquoted "<" would be a
    # redirection and ">=" would write a file. Installed and in range, so pip only checks.
    launch, _ = stand_in_launch
    monkeypatch.delenv("VIDGUIDE_TEST_PIP_LOG")
    monkeypatch.delenv("INDEX_URL", raising=False)
    installed = installer.read_installed_versions(installer.packages_to_check(), launch.is_installed)
    if "onnxruntime" not in installed:
        pytest.skip("onnxruntime is not installed here")
    constraints = installer.write_constraints_file(installer.constraints_for(installed))
    try:
        arguments = installer.pip_install_arguments(ONNXRUNTIME_RANGE, constraints)
        quoted = " ".join(installer.quote_for_host_shell(argument) for argument in arguments)
        output = launch.run_pip(f"--isolated {quoted} --dry-run --no-index", desc="probe", live=False)
    finally:
        os.unlink(constraints)
    assert "Requirement already satisfied: onnxruntime" in output


# --- preload.py ------------------------------------------------------------------------------


@pytest.fixture
def preload_module():
    return _load_file_module("vidguide_preload_under_test", REPO / "preload.py")


def test_preload_adds_the_options_and_parses_them(preload_module):
    parser = argparse.ArgumentParser(prog="launch.py")
    parser.add_argument("--skip-install", action="store_true")
    preload_module.preload(parser)
    preload_module.preload(parser)  # a second copy of the extension: no argparse conflict

    defaults = parser.parse_args([])
    assert defaults.vidguide_loglevel == "INFO"
    assert defaults.vidguide_allowed_roots == ""
    assert defaults.vidguide_max_upload_mb == 2048

    roots = os.pathsep.join(["a", "b"])
    options = parser.parse_args(
        ["--vidguide-loglevel", "debug", "--vidguide-allowed-roots", roots, "--vidguide-max-upload-mb", "64"]
    )
    assert options.vidguide_loglevel == "DEBUG"
    assert options.vidguide_allowed_roots.split(os.pathsep) == ["a", "b"]
    assert options.vidguide_max_upload_mb == 64

    help_text = parser.format_help()
    assert help_text.count("sd-webui-vidguide:") == 1  # the group heading, once
    assert help_text.count("--vidguide-loglevel {DEBUG,INFO,WARNING,ERROR}") == 2  # usage line + option list


@pytest.mark.parametrize(
    "arguments",
    [
        ["--vidguide-loglevel", "TRACE"],
        ["--vidguide-max-upload-mb", "0"],
        ["--vidguide-max-upload-mb", "lots"],
    ],
)
def test_preload_rejects_bad_values(preload_module, arguments, capsys):
    parser = argparse.ArgumentParser(prog="launch.py")
    preload_module.preload(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(arguments)
    assert arguments[0] in capsys.readouterr().err
