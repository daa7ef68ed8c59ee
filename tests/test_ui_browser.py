"""Every VidGuide UI in a real browser, in the gradio this environment has (3.41 as A1111, 4.40 as
Forge): the VidGuide tab's sub-tabs (Video, Jobs, Motion brush, and Edit where it exists) and, in an
img2img tab built as the host builds it, the AlwaysOn "VidGuide flow guidance" script and the
"VidGuide video" Script chosen in the Script dropdown.

For each UI: every control the built page shows there (tests/ui_expectations.py walks the gradio
blocks) is visible in chromium once its tab is selected and its accordions are opened, every control
of the UI's table is among them, inputs and buttons are enabled; then a full-page screenshot goes to
tests/artefacts/gradio<major>/ui-<name>.png. (The runs from the page are in test_browser.py and
test_motion_brush_browser.py.)
"""

from __future__ import annotations

import pytest

pytest.importorskip("playwright.sync_api")
import browser_support  # noqa: E402
import ui_expectations as expected  # noqa: E402


@pytest.fixture(scope="module")
def server(webui, tmp_path_factory):
    """The stand-in page (img2img tab with the scripts, the VidGuide tab) over a private data folder."""
    with browser_support.private_webui(webui, tmp_path_factory.mktemp("ui-browser") / "webui"):
        with browser_support.page_server(webui) as server:
            yield server


@pytest.fixture(scope="module")
def browser(server):
    with browser_support.chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, server, request, record_property):
    viewport = {"width": 1400, "height": 1000}
    with browser_support.open_page(browser, server.url, request, record_property, viewport=viewport) as page:
        yield page


def vidguide_sub_tab(server, label: str):
    """The VidGuide sub-tab labelled ``label`` in the built page, or None."""
    tabs = expected.find_block(server.demo, "vidguide_tabs")
    for child in tabs.children:
        if getattr(child, "label", None) == label:
            return child
    return None


def check_ui(page, root, table: dict, *, where: str) -> None:
    """The controls under ``root`` are all there, visible and enabled (see the module docstring)."""
    controls = expected.visible_controls(root)
    by_id = {control.elem_id: control for control in controls}
    accordions = {accordion for control in controls for accordion in control.accordions}
    missing = [elem_id for elem_id, kind in table.items()
               if (elem_id not in accordions if kind == "accordion" else elem_id not in by_id)]
    assert missing == [], f"controls of the table the page does not show (by its build): {missing}"
    for control in controls:  # the table says which are inputs and buttons; the others: visible is enough
        control.kind = table.get(control.elem_id, "output")
    problems = browser_support.check_controls(page, controls, where=where)
    assert problems == [], problems


SUB_TABS = {"Video": ("video", expected.VIDEO_TAB), "Jobs": ("jobs", expected.JOBS_TAB),
            "Motion brush": ("motion-brush", expected.MOTION_BRUSH_TAB), "Edit": ("edit", {})}


@browser_support.needs_chromium
@pytest.mark.parametrize("label", list(SUB_TABS))
def test_every_vidguide_sub_tab_shows_its_controls(page, server, label):
    name, table = SUB_TABS[label]
    root = vidguide_sub_tab(server, label)
    if root is None:
        pytest.skip(f"no {label} sub-tab in this tree yet")
    browser_support.open_top_tab(page, "VidGuide")
    browser_support.open_sub_tab(page, "vidguide_tabs", label)
    check_ui(page, root, table, where="#tab_vidguide")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.shots.append(browser_support.screenshot(page, f"ui-{name}"))


@browser_support.needs_chromium
def test_the_alwayson_script_shows_its_controls_in_img2img(page, server):
    runner = server.demo.img2img_scripts
    (script,) = [s for s in runner.alwayson_scripts if s.title() == "VidGuide flow guidance"]
    browser_support.open_top_tab(page, "img2img")
    page.wait_for_selector("#img2img_prompt", state="visible")
    check_ui(page, script.group, expected.ALWAYSON_SCRIPT, where="#tab_img2img")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.shots.append(browser_support.screenshot(page, "ui-img2img-alwayson-script"))


@browser_support.needs_chromium
def test_the_video_script_shows_its_controls_once_chosen(page, server):
    runner = server.demo.img2img_scripts
    (script,) = [s for s in runner.selectable_scripts if s.title() == "VidGuide video"]
    browser_support.open_top_tab(page, "img2img")
    page.wait_for_selector("#img2img_prompt", state="visible")
    video_id = "#" + expected.VIDEO_SCRIPT_PREFIX + "video"
    assert not page.locator(video_id).first.is_visible(), "the script's UI shows before it is chosen"
    page.click("#script_list input")
    page.click("#script_list li:has-text('VidGuide video')")
    page.wait_for_selector(video_id, state="visible")
    # The group is hidden until chosen: its children are the controls.
    check_ui(page, script.group, expected.VIDEO_SCRIPT, where="#tab_img2img")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.shots.append(browser_support.screenshot(page, "ui-img2img-video-script"))


@browser_support.needs_chromium
def test_the_alwayson_script_runs_from_the_img2img_tab(page, server, tmp_path):
    """Opening the InputAccordion enables the script (the host's inputAccordion.js); with a guide image
    uploaded, Generate runs img2img on the tiny model with flow guidance on, and the infotext says so."""
    from host_session import sample_picture

    init, guide = tmp_path / "init.png", tmp_path / "guide.png"
    sample_picture(64, seed=1).save(init)
    sample_picture(64, seed=2).save(guide)
    accordion = expected.ALWAYSON_PREFIX + "enabled"
    browser_support.open_top_tab(page, "img2img")
    page.set_input_files("#img2img_image input[type=file]", str(init))
    browser_support.open_accordion(page, accordion, expected.ALWAYSON_PREFIX + "guide_image")
    assert page.is_checked(f"#{accordion}-visible-checkbox"), "opening the accordion did not enable the script"
    page.set_input_files(f"#{expected.ALWAYSON_PREFIX}guide_image input[type=file]", str(guide))
    page.wait_for_selector(f"#{expected.ALWAYSON_PREFIX}guide_image img")
    page.click("#img2img_generate")
    page.wait_for_selector("#html_info_img2img [data-status]")
    info = page.inner_text("#html_info_img2img")
    assert "VidGuide strength: 1" in info and "VidGuide error" not in info, info
    page.wait_for_selector("#img2img_result img")
    page.evaluate("() => window.scrollTo(0, 0)")
    page.shots.append(browser_support.screenshot(page, "ui-img2img-alwayson-run"))
