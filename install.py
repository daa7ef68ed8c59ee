"""Install what sd-webui-vidguide needs and the WebUI lacks, without moving any of the WebUI's pins.

The WebUI (A1111 v1.10.1 and Forge) runs this file as a subprocess, ``python install.py``, from its
own root with ``PYTHONPATH=<webui root>``, so ``import launch`` gives its helpers (``is_installed``,
``run_pip``, ``args``). It prints this script's stdout after it ends and reports a non-zero exit
without stopping the start-up. Run by hand outside the WebUI, the script falls back to
``sys.executable -m pip`` with the same checks.

What it installs, each only when missing or (for ranged packages) installed outside the range:

- ``diffusers>=0.29.0,<0.32``: 0.28 and older fail to import with huggingface_hub>=0.26, 0.32 and
  newer lose StableDiffusionPipeline under A1111's transformers 4.30.2 (PIPELINES.md §6).
- ``av>=12`` (PyAV), for reading and writing videos.
- ``opencv-python-headless``, only when no OpenCV build at all is present (A1111 ships
  opencv-python; two OpenCV wheels in one environment overwrite each other's ``cv2``).
- ``onnxruntime>=1.16,<1.24``: 1.24 and newer require protobuf>=4.25.8, A1111 pins protobuf==3.20.0.

Every pip call gets a constraints file (``-c``) that pins the installed version of each package the
host pins, so pip refuses ("ResolutionImpossible") instead of breaking the WebUI. A1111 would also
put a moved pin back at its next start (``requirements_met`` checks ``==``), and the two would flap.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

try:
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - every WebUI venv has packaging; pip always vendors it
    from pip._vendor.packaging.specifiers import SpecifierSet
    from pip._vendor.packaging.version import InvalidVersion, Version

MESSAGE_PREFIX = "[-] VidGuide:"


@dataclass(frozen=True)
class ManagedPackage:
    """A package this extension installs when it is missing or outside ``specifier``."""

    name: str
    specifier: str
    needed_for: str
    # Other distributions that provide the same import package (GPU/DirectML builds of
    # onnxruntime, the other OpenCV wheels): if one of them is present, installing ours next to
    # it would overwrite its files, so it counts as present.
    alternatives: tuple[str, ...] = ()
    # The module that any build provides; found without metadata it still counts as present.
    import_name: str | None = None

    @property
    def requirement(self) -> str:
        return f"{self.name}{self.specifier}"


DIFFUSERS = ManagedPackage(
    "diffusers", ">=0.29.0,<0.32", "the diffusers video editors and the SVD motion brush"
)
PYAV = ManagedPackage("av", ">=12", "reading and writing video files")
OPENCV = ManagedPackage(
    "opencv-python-headless",
    "",
    "optical flow and frame warping",
    alternatives=("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
    import_name="cv2",
)
ONNXRUNTIME = ManagedPackage(
    "onnxruntime",
    ">=1.16,<1.24",
    "the ONNX frame tagger",
    alternatives=(
        "onnxruntime-gpu",
        "onnxruntime-directml",
        "onnxruntime-openvino",
        "onnxruntime-silicon",
    ),
)
MANAGED_PACKAGES: tuple[ManagedPackage, ...] = (DIFFUSERS, PYAV, OPENCV, ONNXRUNTIME)

# Packages whose installed version pip must not change. The union of A1111 v1.10.1's and Forge's
# requirements_versions.txt, plus what TORCH_COMMAND installs (torch, torchvision, xformers) and the
# unpinned packages the pins resolve to (huggingface-hub, tokenizers, pydantic, starlette,
# gradio-client, scipy, opencv-python). diffusers is pinned by Forge but is ours to manage: see
# host_requirement_pins for how a host pin on it is respected.
HOST_PINNED_PACKAGES: tuple[str, ...] = (
    "torch",
    "torchvision",
    "xformers",
    "numpy",
    "Pillow",
    "safetensors",
    "transformers",
    "tokenizers",
    "huggingface-hub",
    "accelerate",
    "protobuf",
    "gradio",
    "gradio-client",
    "fastapi",
    "pydantic",
    "starlette",
    "httpx",
    "httpcore",
    "opencv-python",
    "scipy",
    "scikit-image",
    "open-clip-torch",
    "clip",
    "pytorch-lightning",
    "kornia",
    "einops",
    "omegaconf",
    "spandrel",
    "torchsde",
    "torchdiffeq",
    "tomesd",
    "setuptools",
    "tqdm",
    "peft",
    "gradio-rangeslider",
    "gradio-imageslider",
)


def canonical_name(name: str) -> str:
    """PEP 503 normalisation, so "Pillow", "pillow" and "huggingface_hub" match their dist names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_version(text: str | None) -> Version | None:
    if text is None:
        return None
    try:
        return Version(text)
    except InvalidVersion:
        return None


@dataclass
class InstallPlan:
    """What to install (pip requirement strings, in order) and what to tell the user."""

    requirements: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def plan_install(
    installed_versions: Mapping[str, str | None],
    host_pins: Mapping[str, str] | None = None,
) -> InstallPlan:
    """Decide what to install from ``installed_versions`` (name -> version, None = present but the
    version is unknown). ``host_pins`` are the host's own ``name==version`` requirements.
    Pure: reads nothing from the environment."""
    installed = {canonical_name(name): version for name, version in installed_versions.items()}
    pins = {canonical_name(name): version for name, version in (host_pins or {}).items()}
    plan = InstallPlan()

    for package in MANAGED_PACKAGES:
        key = canonical_name(package.name)
        present_alternatives = [name for name in package.alternatives if canonical_name(name) in installed]
        if key not in installed:
            if present_alternatives:
                _check_alternative(package, present_alternatives[0], installed, plan)
                continue
            if package.import_name is not None and package.import_name in installed:
                continue  # a build without pip metadata (source build, conda) provides the module
            plan.requirements.append(package.requirement)
            continue

        if not package.specifier:
            continue
        version = _parse_version(installed[key])
        if version is None:
            # An importable checkout without usable metadata: reinstalling would clobber
            # someone's development copy, so leave it.
            plan.notes.append(
                f"{MESSAGE_PREFIX} cannot read the version of the installed {package.name}; leaving it. "
                f"The range tested for {package.needed_for} is {package.requirement}."
            )
            continue
        if SpecifierSet(package.specifier).contains(version, prereleases=True):
            continue
        if pins.get(key) == installed[key]:
            # The host pins this exact version (Forge pins diffusers): replacing it would make the
            # host put it back at its next start, and the two would reinstall each other forever.
            plan.notes.append(
                f"{MESSAGE_PREFIX} the WebUI pins {package.name}=={installed[key]}, outside the tested range "
                f"{package.requirement}; leaving the WebUI's version. Please quote this line when "
                f"reporting problems with {package.needed_for}."
            )
            continue
        plan.requirements.append(package.requirement)
    return plan


def _check_alternative(
    package: ManagedPackage, alternative: str, installed: Mapping[str, str | None], plan: InstallPlan
) -> None:
    """Another build of the package is installed: never replace it, only warn when out of range."""
    if not package.specifier:
        return
    version = _parse_version(installed[canonical_name(alternative)])
    if version is not None and not SpecifierSet(package.specifier).contains(version, prereleases=True):
        plan.notes.append(
            f"{MESSAGE_PREFIX} {alternative}=={version} is installed, outside the tested range "
            f"{package.requirement}; leaving it. For problems with {package.needed_for}, install "
            f'"{alternative}{package.specifier}" by hand.'
        )


def requirements_to_install(
    installed_versions: Mapping[str, str | None], host_pins: Mapping[str, str] | None = None
) -> list[str]:
    """The pip requirement strings to install, e.g. ``["diffusers>=0.29.0,<0.32"]``."""
    return plan_install(installed_versions, host_pins).requirements


def constraints_for(installed_versions: Mapping[str, str | None]) -> list[str]:
    """Constraint lines (``name==version``) pinning every installed host-pinned package.

    Only installed packages are pinned: a constraint on a missing package would stop pip from
    installing it as a dependency. Packages this extension installs are not in the list. A version
    pip cannot parse is skipped, because one bad line makes pip reject the whole file."""
    installed = {canonical_name(name): version for name, version in installed_versions.items()}
    lines = []
    for name in HOST_PINNED_PACKAGES:
        key = canonical_name(name)
        if _parse_version(installed.get(key)) is None:
            continue
        lines.append(f"{name}=={installed[key]}")
    return lines


def packages_to_check() -> list[str]:
    """Every distribution (and bare module) whose presence or version the plan depends on."""
    names: list[str] = []
    for package in MANAGED_PACKAGES:
        names.extend((package.name, *package.alternatives))
        if package.import_name is not None:
            names.append(package.import_name)
    names.extend(HOST_PINNED_PACKAGES)
    return list(dict.fromkeys(names))


def is_installed_like_host(package: str) -> bool:
    """The same test as the WebUI's ``launch.is_installed``: dist metadata, then an importable module.
    Used only when ``launch`` is unavailable."""
    try:
        importlib.metadata.distribution(package)
        return True
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def read_installed_versions(
    names: Iterable[str], is_installed: Callable[[str], bool]
) -> dict[str, str | None]:
    """Presence through ``is_installed`` (the host's own test), version through dist metadata."""
    versions: dict[str, str | None] = {}
    for name in names:
        if not is_installed(name):
            continue
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


_PIN_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)")


def host_requirement_pins(webui_root: str | None) -> dict[str, str]:
    """``name -> version`` for each ``name==version`` line of the host's requirements_versions.txt
    (empty when there is none, e.g. outside the WebUI)."""
    if not webui_root:
        return {}
    path = os.path.join(webui_root, "requirements_versions.txt")
    try:
        with open(path, encoding="utf8") as file:
            lines = file.read().splitlines()
    except OSError:
        return {}
    pins = {}
    for line in lines:
        match = _PIN_LINE.match(line)
        if match:
            pins[match.group(1)] = match.group(2)
    return pins


def write_constraints_file(lines: list[str]) -> str:
    """A temporary constraints file; the caller removes it. Closed before pip reads it, which
    Windows needs."""
    handle, path = tempfile.mkstemp(prefix="vidguide-constraints-", suffix=".txt")
    with os.fdopen(handle, "w", encoding="utf8") as file:
        file.write("\n".join(lines) + "\n")
    return path


def pip_install_arguments(requirement: str, constraints_path: str) -> list[str]:
    return ["install", "-c", constraints_path, requirement]


def quote_for_host_shell(argument: str) -> str:
    """``launch.run_pip`` runs its command through the shell (``shell=True``): ``<`` and ``>`` in a
    requirement would be redirections. cmd.exe knows only double quotes."""
    if os.name == "nt":
        return f'"{argument}"'
    return shlex.quote(argument)


def install_with_launch(launch_module, requirement: str, constraints_path: str) -> None:
    """Install through the host, which adds ``--prefer-binary`` and its ``INDEX_URL``.
    Raises what ``launch.run_pip`` raises (RuntimeError with pip's output) on failure."""
    command = " ".join(quote_for_host_shell(a) for a in pip_install_arguments(requirement, constraints_path))
    launch_module.run_pip(command, desc=f"{requirement} for sd-webui-vidguide")


def install_standalone(requirement: str, constraints_path: str) -> None:
    """Install with this interpreter's pip, as the host would (same flags, same INDEX_URL)."""
    command = [sys.executable, "-m", "pip", *pip_install_arguments(requirement, constraints_path)]
    command.append("--prefer-binary")
    if os.environ.get("INDEX_URL"):
        command.extend(["--index-url", os.environ["INDEX_URL"]])
    print(f"VidGuide: installing {requirement}: {' '.join(shlex.quote(part) for part in command)}")
    result = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise RuntimeError(f"pip exited with code {result.returncode}\n{result.stdout}\n{result.stderr}")


def failure_message(requirement: str, error: BaseException, python: str = sys.executable) -> str:
    package = next(p for p in MANAGED_PACKAGES if p.requirement == requirement)
    output_tail = "\n".join(str(error).strip().splitlines()[-15:])
    hand_command = f'"{python}" -m pip install "{requirement}"'
    return (
        f"{MESSAGE_PREFIX} could not install {requirement} (needed for {package.needed_for}). "
        f"Most often pip could only install it by changing a package the WebUI pins, which this "
        f"installer forbids (pip then says ResolutionImpossible and names the package), or pip "
        f"could not reach the package index.\n"
        f"{MESSAGE_PREFIX} Without it these features are off: {package.needed_for}; the rest of "
        f"the extension works. To install it by hand, stop the WebUI and run in its environment:\n"
        f"    {hand_command}\n"
        f"{MESSAGE_PREFIX} last lines of pip's output:\n{output_tail}"
    )


def import_launch():
    """The WebUI's ``launch`` module, or None outside the WebUI. Checked by the functions used,
    since an unrelated module named ``launch`` may be importable."""
    try:
        import launch
    except Exception:  # the host module imports most of modules/*; any failure means "not usable"
        return None
    if callable(getattr(launch, "run_pip", None)) and callable(getattr(launch, "is_installed", None)):
        return launch
    return None


def webui_root_of(launch_module) -> str | None:
    """The WebUI's launch.py sits in its root, next to requirements_versions.txt."""
    path = getattr(launch_module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else None


def skip_install_requested(launch_module, argv: list[str]) -> bool:
    if launch_module is not None:
        return bool(getattr(getattr(launch_module, "args", None), "skip_install", False))
    return "--skip-install" in argv


def run_install(
    launch_module,
    argv: list[str],
    installed_versions: Mapping[str, str | None] | None = None,
) -> int:
    """Install what is missing. Returns the number of requirements that failed to install."""
    if skip_install_requested(launch_module, argv):
        return 0

    is_installed = launch_module.is_installed if launch_module is not None else is_installed_like_host
    if installed_versions is None:
        installed_versions = read_installed_versions(packages_to_check(), is_installed)
    plan = plan_install(installed_versions, host_requirement_pins(webui_root_of(launch_module)))
    for note in plan.notes:
        print(note)
    if not plan.requirements:
        return 0

    if launch_module is None:
        print(f"VidGuide: not running inside the WebUI; using {sys.executable} -m pip.")
    constraints = constraints_for(installed_versions)
    constraints_path = write_constraints_file(constraints)
    failures = 0
    try:
        for requirement in plan.requirements:
            try:
                if launch_module is not None:
                    install_with_launch(launch_module, requirement, constraints_path)
                else:
                    install_standalone(requirement, constraints_path)
            except (RuntimeError, OSError, subprocess.SubprocessError) as error:
                failures += 1
                print(failure_message(requirement, error))
    finally:
        os.unlink(constraints_path)
    return failures


def main(argv: list[str] | None = None) -> int:
    launch_module = import_launch()
    failures = run_install(launch_module, sys.argv[1:] if argv is None else argv)
    # Inside the WebUI a failure is already explained above; a non-zero exit would only make the
    # host wrap the same text in a second error report. By hand, the exit status tells scripts.
    if launch_module is None and failures:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
