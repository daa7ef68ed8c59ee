"""The "Edit" sub-tab in a real browser: Debian's chromium, driven by Playwright, against the gradio
stand-in page (tests/host/webui_page.py), with tiny random-weight models in the WebUI's models folder
(an SD 1.x diffusers folder in Stable-diffusion/, a text-to-video one in text2video/) so that every
run really trains, inverts, samples and writes a video.

What it shows end to end (issues 5 and 6, WebUI side): the sub-tab renders with its controls; a
Tune-A-Video training started from the page finishes with the WebUI's progress bar, its artefact is
selected in the list and Edit with it writes the edited video that appears in the page; AttentionFlow
(no training) edits a video on the server from the page; a bad input is a clear message, not a crash.

Screenshots go to tests/artefacts/gradio<major>/ (ed-*.png, and FAILED-*.png for any failure).
"""

from __future__ import annotations

import re
import time

import pytest
from test_edit_webui import install_edit_models, tiny_edit_models  # noqa: F401 (a fixture)
from videos import moving_pattern, write_clip

pytest.importorskip("playwright.sync_api")

import browser_support  # noqa: E402

TIMEOUT_MS = browser_support.TIMEOUT_MS
# Tiny and quick: 2 frames of 64x64, 2 training steps, 2 sampling and inversion steps.
CLIP_SETTINGS = {"frames": 2, "width": 64, "height": 64, "sample_stride": 1}
TRAIN_SETTINGS = {"train_steps": 2, "learning_rate": 0.001, "checkpoint_every": 1}
EDIT_SETTINGS = {"edit_steps": 2, "inversion_steps": 2, "guidance_scale": 2}

needs_chromium = browser_support.needs_chromium
screenshot = browser_support.screenshot  # into tests/artefacts/gradio<major>/


@pytest.fixture(scope="module")
def site(webui, tiny_edit_models, tmp_path_factory):
    """The stand-in page over a private WebUI data folder with the tiny models and a clip in vidguide-inputs."""
    data = tmp_path_factory.mktemp("ed-browser") / "webui"
    with browser_support.private_webui(webui, data, default_allowed_roots=True):
        install_edit_models(data, tiny_edit_models)
        (data / "vidguide-inputs").mkdir(parents=True)
        write_clip(data / "vidguide-inputs" / "clip.mp4", moving_pattern(4))
        with browser_support.page_server(webui) as server:  # built now: its model dropdowns list these models
            yield {"url": server.url, "data": data, "clip": data / "vidguide-inputs" / "clip.mp4"}


@pytest.fixture(scope="module")
def browser(site):
    with browser_support.chromium() as browser:
        yield browser


@pytest.fixture
def page(browser, site, request, record_property):
    """A fresh page on the stand-in WebUI (nothing outside loopback is fetched); a screenshot if the
    test fails; no JavaScript error allowed (browser_support.open_page)."""
    with browser_support.open_page(browser, site["url"], request, record_property,
                                   viewport={"width": 1400, "height": 1100}) as page:
        yield page


def open_edit(page) -> None:
    browser_support.open_top_tab(page, "VidGuide")
    browser_support.open_sub_tab(page, "vidguide_tabs", "Edit")
    page.wait_for_selector("#vidguide_ed_edit", state="visible")


fill = browser_support.fill_box


def fill_all(page, values: dict) -> None:
    for name, value in values.items():
        fill(page, f"vidguide_ed_{name}", value)


def choose_method(page, label: str) -> None:
    page.locator("#vidguide_ed_method label").filter(has_text=label).click()


def wait_status(page, statuses: tuple[str, ...], timeout: int = TIMEOUT_MS) -> str:
    return browser_support.wait_status(page, "vidguide_ed_status", statuses, timeout)


def clear_status(page) -> None:
    """Forget the previous message, so that the next wait sees the next one."""
    page.evaluate("""() => {
        const root = typeof gradioApp === 'function' ? gradioApp() : document;
        root.querySelectorAll('#vidguide_ed_status [data-status]').forEach((node) => node.remove());
    }""")


def watch_progress(page) -> None:
    """Record, in the page (``window.__ed.texts``), every progress-bar text the sub-tab shows."""
    browser_support.watch_progress(page, "#vidguide_edit_tab", "__ed")


# --------------------------------------------------------------------------- the browser


@needs_chromium
def test_the_edit_sub_tab_renders_and_follows_the_method(page):
    open_edit(page)
    for elem_id in ("vidguide_ed_method", "vidguide_ed_video", "vidguide_ed_server_path", "vidguide_ed_source_prompt",
                    "vidguide_ed_edit_prompts", "vidguide_ed_sd_model", "vidguide_ed_frames", "vidguide_ed_train_steps",
                    "vidguide_ed_learning_rate", "vidguide_ed_checkpoint_every", "vidguide_ed_artefact",
                    "vidguide_ed_train", "vidguide_ed_resume", "vidguide_ed_edit", "vidguide_ed_interrupt",
                    "vidguide_ed_result_video", "vidguide_ed_status"):
        assert page.locator(f"#vidguide_edit_tab #{elem_id}").count() >= 1, f"#{elem_id} is missing"
    assert page.evaluate("() => typeof vidguideEditSubmit") == "function"
    assert "checkpoint" in (page.get_attribute("#vidguide_ed_interrupt", "title") or "")
    screenshot(page, "ed-01-edit-tab")
    # Motion Inversion: the text-to-video model instead of the SD one, and Generate.
    choose_method(page, "Motion Inversion")
    page.wait_for_selector("#vidguide_ed_t2v_model", state="visible")
    assert page.input_value("#vidguide_ed_t2v_model input") == "tiny-t2v"
    assert not page.locator("#vidguide_ed_sd_model").is_visible()
    assert page.inner_text("#vidguide_ed_edit").strip() == "Generate"
    # AttentionFlow: no training.
    choose_method(page, "AttentionFlow")
    page.wait_for_selector("#vidguide_ed_train", state="hidden")
    assert page.inner_text("#vidguide_ed_edit").strip() == "Edit"
    assert page.locator("#vidguide_ed_sd_model").is_visible()
    page.wait_for_timeout(500)  # let gradio finish the method change's requests before the page closes


@needs_chromium
def test_tune_a_video_trains_then_edits_from_the_page(page, site, monkeypatch):
    # Tiny training steps take milliseconds: each one is held longer than a progress poll (the page polls
    # every 300 ms) so that the bar is seen following the run, whatever the machine's load.
    from lib_vidguide.webui import edit_host

    shown = edit_host._training_state_text

    def held(*args, **kwargs):
        text = shown(*args, **kwargs)
        time.sleep(1.2)
        return text

    monkeypatch.setattr(edit_host, "_training_state_text", held)
    videos = site["data"] / "outputs" / "vidguide" / "edit" / "videos"
    open_edit(page)
    page.set_input_files("#vidguide_ed_video input[type=file]", str(site["clip"]))  # an upload
    page.wait_for_selector("#vidguide_ed_video video")
    fill(page, "vidguide_ed_source_prompt", "a pattern moving right")
    fill(page, "vidguide_ed_name", "from the page")
    fill_all(page, {**CLIP_SETTINGS, **TRAIN_SETTINGS})
    # Base model left empty: the WebUI's loaded checkpoint, or (the stand-in has no file) the only one there.
    watch_progress(page)
    page.click("#vidguide_ed_train")
    text = wait_status(page, ("done",))
    assert re.search(r"Trained \d{8}-\d{6}-tav-[0-9a-f]{6}: 2 steps, last loss \d", text), text
    assert "Time taken" in text, text  # through the host's wrap_gradio_gpu_call
    chosen = page.input_value("#vidguide_ed_artefact input")
    assert re.match(r"\d{8}-\d{6}-tav-[0-9a-f]{6} · from the page · Tune-A-Video · done", chosen), chosen
    (trained,) = (site["data"] / "outputs" / "vidguide" / "edit" / "trained").iterdir()
    assert (trained / "tune_a_video.safetensors").is_file() and (trained / "source.mp4").is_file()
    screenshot(page, "ed-02-trained")

    clear_status(page)
    fill(page, "vidguide_ed_edit_prompts", "a red pattern moving right")
    fill_all(page, EDIT_SETTINGS)
    page.click("#vidguide_ed_edit")
    text = wait_status(page, ("done",))
    assert "Done: 1 video(s), 2 frames at 64x64" in text, text
    page.wait_for_selector("#vidguide_ed_result_video video[src]")
    assert (page.get_attribute("#vidguide_ed_result_video video", "src") or "").endswith(".mp4")
    page.wait_for_selector("#vidguide_edit_tab .progressDiv", state="detached")
    # The WebUI's progress bar followed the runs: it showed their shared.state text (a percentage too when a
    # poll lands mid-run; these tiny runs can finish between two polls).
    texts = page.evaluate("() => window.__ed.texts")
    assert any("Tune-A-Video" in text for text in texts), f"the progress bar never showed the run: {texts}"
    assert [path.suffix for path in videos.iterdir()] == [".mp4"]
    screenshot(page, "ed-03-edited")


@needs_chromium
def test_attention_flow_edits_a_server_video_from_the_page(page, site):
    videos = site["data"] / "outputs" / "vidguide" / "edit" / "videos"
    before = set(videos.glob("*-af-*.mp4")) if videos.exists() else set()
    open_edit(page)
    choose_method(page, "AttentionFlow")
    page.wait_for_selector("#vidguide_ed_train", state="hidden")
    fill_all(page, {**CLIP_SETTINGS, "edit_steps": 2, "guidance_scale": 2})
    fill(page, "vidguide_ed_source_prompt", "a pattern moving right")
    fill(page, "vidguide_ed_edit_prompts", "a stripe moving right")
    # A path outside the allowed folders is a clear message first.
    fill(page, "vidguide_ed_server_path", "/etc/passwd")
    page.click("#vidguide_ed_edit")
    text = wait_status(page, ("error",))
    assert "outside the folders VidGuide may read" in text and "Traceback" not in text, text
    clear_status(page)
    fill(page, "vidguide_ed_server_path", str(site["clip"]))
    page.click("#vidguide_ed_edit")
    text = wait_status(page, ("done",))
    assert "Done: 1 video(s), 2 frames at 64x64" in text, text
    page.wait_for_selector("#vidguide_ed_result_video video[src]")
    (made,) = set(videos.glob("*-af-*.mp4")) - before
    assert made.stat().st_size > 0
    screenshot(page, "ed-04-attention-flow")
