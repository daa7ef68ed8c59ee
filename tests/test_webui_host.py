"""Host settings: preload options reach cmd_opts and the logger; the scripts load as the host loads them."""

from __future__ import annotations

import logging
import subprocess
import sys


def test_preload_options_are_parsed_by_the_host(webui):
    from modules import shared

    options = shared.preload_extensions([str(webui.repo)], ["--vidguide-loglevel", "debug", "--vidguide-max-upload-mb", "5"])
    try:
        assert options.vidguide_loglevel == "DEBUG" and options.vidguide_max_upload_mb == 5
        from lib_vidguide.webui import host

        assert host.configure_logging().level == logging.DEBUG
    finally:
        shared.preload_extensions([str(webui.repo)])
        from lib_vidguide.webui import host

        host.configure_logging()
    assert logging.getLogger("vidguide").level == logging.INFO


def test_the_scripts_load_with_the_extension_root_on_sys_path_only_while_importing(webui, tmp_path):
    """In a fresh interpreter whose path lacks the repo, as in the WebUI: the entry script's
    top-level import of lib_vidguide must work, and the root must be gone afterwards (A1111;
    Forge keeps every script basedir on sys.path, HOST_A1111.md §2.5)."""
    from host_session import forge_mode

    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(webui.repo / 'tests' / 'host')!r})\n"
        f"assert {str(webui.repo)!r} not in sys.path\n"
        "from modules import scripts\n"
        f"runner = scripts.load_scripts([{str(webui.repo)!r}])\n"
        "runner.initialize_scripts(is_img2img=True)\n"
        "from modules import errors\n"
        f"print([s.title() for s in runner.scripts], {str(webui.repo)!r} in sys.path, errors.reported)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kept_on_path = forge_mode()
    assert result.stdout.strip().splitlines()[-1] == f"['VidGuide flow guidance', 'VidGuide video'] {kept_on_path} []"
    alwayson = webui.script("VidGuide flow guidance")
    assert alwayson.alwayson and alwayson.args_to - alwayson.args_from == 8


def test_ui_defaults_equal_the_settings_defaults(webui):
    from lib_vidguide.settings import ALWAYSON_ARG_NAMES, GuidanceSettings

    script = webui.script("VidGuide flow guidance")
    values = dict(zip(ALWAYSON_ARG_NAMES, (control.value for control in script.controls)))
    defaults = GuidanceSettings().to_dict()
    assert {name: values[name] for name in defaults} == defaults
    assert values["guide_image"] is None and values["previous_source"] is None
