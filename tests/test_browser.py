"""The VidGuide tab in a real browser: Debian's chromium, driven by Playwright, against a gradio
3.41 page that mounts the tab on the stand-in host (tests/host/webui_page.py).

What it shows end to end: the tab renders and its script is loaded; a job started from the
page runs to an mp4 with the WebUI's progress bar and live preview (so the task id made by
javascript/vidguide.js reaches wrap_gradio_gpu_call and /internal/progress); Interrupt stops
a job after its current frame with every finished frame on disk; the Jobs sub-tab lists it
as interrupted and resumes it to the same frames as an uninterrupted run.

Screenshots go to tests/artefacts/gradio<major>/ (one per step, and one for any failure).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("playwright.sync_api")
import browser_support  # noqa: E402
from test_audio import make_source  # noqa: E402

TIMEOUT_MS = browser_support.TIMEOUT_MS
# Small and quick on the tiny model; the same for every job here so their frames compare.
SETTINGS = {"prompt": "a painting", "steps": 6, "denoising_strength": 0.5, "seed": 9, "width": 64, "height": 64}

needs_chromium = browser_support.needs_chromium


@dataclass
class Site:
    url: str
    data: Path
    source: Path

    @property
    def jobs_dir(self) -> Path:
        return self.data / "outputs" / "vidguide" / "jobs"

    def job_ids(self) -> set[str]:
        return {path.name for path in self.jobs_dir.iterdir()} if self.jobs_dir.exists() else set()

    def manifest(self, job_id: str) -> dict:
        return json.loads((self.jobs_dir / job_id / "manifest.json").read_text())

    def frame_files(self, job_id: str) -> list[Path]:
        return sorted((self.jobs_dir / job_id / "frames").glob("frame_*.png"))


@pytest.fixture(scope="module")
def site(webui, tmp_path_factory):
    """The stand-in page on loopback, over a private WebUI data folder whose inputs folder is allowed."""
    data = tmp_path_factory.mktemp("browser") / "webui"
    with browser_support.private_webui(webui, data, default_allowed_roots=True):
        inputs = data / "vidguide-inputs"
        inputs.mkdir(parents=True)
        source = make_source(inputs / "clip.mp4")
        with browser_support.page_server(webui) as server:
            yield Site(server.url, data, source)


@pytest.fixture(scope="module")
def browser(site):
    with browser_support.chromium() as browser:
        yield browser


screenshot = browser_support.screenshot  # into tests/artefacts/gradio<major>/


@pytest.fixture
def page(browser, site, request, record_property):
    """A fresh page on the stand-in WebUI (nothing outside loopback is fetched); a screenshot if the test fails."""
    viewport = {"width": 1400, "height": 1000}
    with browser_support.open_page(browser, site.url, request, record_property, viewport=viewport) as page:
        yield page


def open_vidguide(page) -> None:
    browser_support.open_top_tab(page, "VidGuide")
    page.wait_for_selector("#vidguide_generate", state="visible")


def open_sub_tab(page, label: str) -> None:
    browser_support.open_sub_tab(page, "vidguide_tabs", label)


def job_row(page, job_id: str):
    """The Jobs table's row of ``job_id``. gradio 4's table has its rows in a virtual table
    (``tr[slot=tbody]``) and, before it, a hidden one-row table of each column's longest value."""
    from webui_page import gradio_major

    rows = "#vidguide_jobs_table tr[slot=tbody]" if gradio_major() >= 4 else "#vidguide_jobs_table tr"
    return page.locator(rows, has_text=job_id)


def field(page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input[type=number], input[type=text]").first


def fill_settings(page, *, max_frames: int) -> None:
    field(page, "vidguide_prompt").fill(SETTINGS["prompt"])
    for elem_id, value in (("vidguide_steps", SETTINGS["steps"]),
                           ("vidguide_denoising_strength", SETTINGS["denoising_strength"]),
                           ("vidguide_seed", SETTINGS["seed"]), ("vidguide_width", SETTINGS["width"]),
                           ("vidguide_height", SETTINGS["height"]), ("vidguide_max_frames", max_frames)):
        browser_support.fill_box(page, elem_id, value)


def watch_progress(page) -> None:
    """Record, in the page, every progress-bar text and whether a live preview appeared."""
    page.evaluate("""() => {
        window.__vg = {texts: [], previews: 0};
        new MutationObserver(() => {
            const root = typeof gradioApp === 'function' ? gradioApp() : document;
            const bar = root.querySelector('#tab_vidguide .progressDiv .progress');
            const seen = window.__vg.texts;
            if (bar && bar.textContent && seen[seen.length - 1] !== bar.textContent) seen.push(bar.textContent);
            if (root.querySelector('#tab_vidguide .livePreview img')) window.__vg.previews += 1;
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""")


def progress_seen(page) -> dict:
    return page.evaluate("() => window.__vg")


wait_status = browser_support.wait_status


def video_src(page, elem_id: str) -> str:
    page.wait_for_selector(f"#{elem_id} video[src]")
    return page.get_attribute(f"#{elem_id} video", "src") or ""


@pytest.fixture
def slow_frames(monkeypatch):
    """Frames slow enough for a person (and a test) to press a button mid-job; same pictures."""
    from lib_vidguide.webui import video_script

    original = video_script.WebUIFrameRenderer.render
    delay = {"seconds": 0.0}

    def render(self, frame, guide, index):
        result = original(self, frame, guide, index)
        time.sleep(delay["seconds"])
        return result

    monkeypatch.setattr(video_script.WebUIFrameRenderer, "render", render)
    return delay


def reference_frames(site: Site, max_frames: int) -> list[np.ndarray]:
    """The same job run without interruption, straight through jobs_host (under the queue lock)."""
    from lib_vidguide.jobs import JobSettings
    from lib_vidguide.webui import jobs_host
    from modules.call_queue import queue_lock
    from modules.shared import state

    settings = JobSettings.from_dict({
        "video": {"max_frames": max_frames, "seed": SETTINGS["seed"], "width": SETTINGS["width"],
                  "height": SETTINGS["height"]},
        "img2img": {"prompt": SETTINGS["prompt"], "steps": SETTINGS["steps"],
                    "denoising_strength": SETTINGS["denoising_strength"]},
    })
    job = jobs_host.job_store().create(site.source, settings, name="reference")
    with queue_lock:
        state.begin(job="reference")
        try:
            assert jobs_host.run_job_here(job).status == "done"
        finally:
            state.end()
    frames = [np.asarray(Image.open(path)) for path in site.frame_files(job.job_id)]
    jobs_host.job_store().delete(job.job_id)
    return frames


# --------------------------------------------------------------------------- the browser


@needs_chromium
def test_the_tab_renders_with_its_script(page):
    open_vidguide(page)
    for elem_id in ("vidguide_video", "vidguide_server_path", "vidguide_prompt", "vidguide_sampler",
                    "vidguide_guidance_strength", "vidguide_drift", "vidguide_tagger", "vidguide_frames",
                    "vidguide_interrupt", "vidguide_skip", "vidguide_result", "vidguide_preview"):
        assert page.locator(f"#tab_vidguide #{elem_id}").count() == 1, f"#{elem_id} is missing from the tab"
    hooks = page.evaluate("() => [typeof vidguideSubmit, typeof vidguideResume, typeof requestProgress, "
                          "typeof randomId]")
    assert hooks == ["function"] * 4, hooks
    assert "after the current frame" in (page.get_attribute("#vidguide_interrupt", "title") or "")
    assert page.input_value("#vidguide_sampler input") == "Euler"
    page.shots.append(screenshot(page, "01-video-tab"))
    open_sub_tab(page, "Jobs")
    page.wait_for_selector("#vidguide_jobs_table", state="visible")
    page.wait_for_load_state("networkidle")
    page.shots.append(screenshot(page, "02-jobs-tab"))


@needs_chromium
def test_a_job_started_from_the_page_finishes_with_the_progress_bar(page, site, slow_frames):
    slow_frames["seconds"] = 0.4
    before = site.job_ids()
    open_vidguide(page)
    page.set_input_files("#vidguide_video input[type=file]", str(site.source))
    page.wait_for_selector("#vidguide_video video")
    fill_settings(page, max_frames=4)
    watch_progress(page)
    page.click("#vidguide_generate")

    page.wait_for_selector("#tab_vidguide .progressDiv", timeout=30_000)
    text = wait_status(page, "vidguide_status", ("done",))
    assert "done: 4 frames" in text and "Time taken" in text, text  # wrap_gradio_gpu_call's timing HTML follows ours
    assert video_src(page, "vidguide_result").endswith(".mp4")
    page.wait_for_selector("#tab_vidguide .progressDiv", state="detached")
    seen = progress_seen(page)
    assert any(re.search(r"\d+%", text) for text in seen["texts"]), f"no progress percentage shown: {seen}"
    assert any("frame" in text for text in seen["texts"]), f"no frame counter (state.textinfo) shown: {seen}"
    assert seen["previews"] > 0, "the live preview (state.assign_current_image) never appeared"
    page.shots.append(screenshot(page, "03-generated"))

    (job_id,) = site.job_ids() - before
    manifest = site.manifest(job_id)
    assert manifest["status"] == "done" and manifest["frames_done"] == 4 and manifest["source"]["copied"]
    assert len(site.frame_files(job_id)) == 4 and (site.jobs_dir / job_id / "output.mp4").exists()


@needs_chromium
def test_skip_from_the_page_skips_the_current_frame_and_the_job_goes_on(page, site, monkeypatch):
    """The third frame's sampling waits until Skip is pressed: the host's state.skip() then stops
    that frame, which the job replaces by the previous output moved by the flow."""
    import threading

    from modules import sd_samplers_cfg_denoiser
    from modules.shared import state

    original = sd_samplers_cfg_denoiser.CFGDenoiser.forward
    reached = threading.Event()

    def forward(self, *args, **kwargs):
        if state.job_no == 2 and not reached.is_set():
            reached.set()
            deadline = time.time() + 30
            while not state.skipped and time.time() < deadline:
                time.sleep(0.02)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(sd_samplers_cfg_denoiser.CFGDenoiser, "forward", forward)
    before = site.job_ids()
    open_vidguide(page)
    field(page, "vidguide_server_path").fill(str(site.source))
    fill_settings(page, max_frames=5)
    page.click("#vidguide_generate")
    assert browser_support.wait_for_event(page, reached, 60), "the job never reached its third frame"
    page.click("#vidguide_skip")
    text = wait_status(page, "vidguide_status", ("done",))
    assert "done: 5 frames" in text and "Skipped frames (the previous output moved by the flow): 3." in text, text
    (job_id,) = site.job_ids() - before
    manifest = site.manifest(job_id)
    assert manifest["skipped_frames"] == [2] and manifest["frames_done"] == 5, manifest
    assert len(site.frame_files(job_id)) == 5


@needs_chromium
def test_interrupt_keeps_the_frames_and_the_jobs_tab_resumes_to_identical_frames(page, site, slow_frames):
    total = 8
    expected = reference_frames(site, total)
    before = site.job_ids()
    slow_frames["seconds"] = 0.8
    open_vidguide(page)
    field(page, "vidguide_server_path").fill(str(site.source))
    fill_settings(page, max_frames=total)
    watch_progress(page)
    page.click("#vidguide_generate")

    # The progress bar counts finished frames ("frame 2/8" once two are done); the disk must agree.
    page.wait_for_function(
        "() => /frame [2-7]\\/8/.test("
        "(document.querySelector('#tab_vidguide .progressDiv .progress') || {}).textContent || '')",
        timeout=60_000)
    (job_id,) = site.job_ids() - before
    assert len(site.frame_files(job_id)) >= 2
    page.click("#vidguide_interrupt")
    page.shots.append(screenshot(page, "04-progress-bar-while-interrupting"))
    text = wait_status(page, "vidguide_status", ("interrupted",))
    assert "every finished frame is kept" in text, text
    page.shots.append(screenshot(page, "05-interrupted"))

    manifest = site.manifest(job_id)
    kept = site.frame_files(job_id)
    assert manifest["status"] == "interrupted"
    assert 2 <= manifest["frames_done"] == len(kept) < total, (manifest["frames_done"], [p.name for p in kept])
    kept_bytes = {path.name: path.read_bytes() for path in kept}

    open_sub_tab(page, "Jobs")
    row = job_row(page, job_id)
    row.wait_for()
    assert "interrupted" in row.inner_text() and f"{len(kept)}/{total}" in row.inner_text(), row.inner_text()
    page.click("#vidguide_job_select input")
    page.click(f"#vidguide_job_select li:has-text('{job_id}')")
    page.wait_for_selector("#vidguide_job_details [data-status='interrupted']")
    page.click("#vidguide_job_details")  # closes the dropdown's list before the screenshot
    page.shots.append(screenshot(page, "06-jobs-interrupted"))

    slow_frames["seconds"] = 0.3
    watch_progress(page)
    page.click("#vidguide_job_resume")
    page.wait_for_selector("#tab_vidguide .progressDiv", timeout=30_000)
    text = wait_status(page, "vidguide_job_details", ("done",))
    assert f"done: {total} frames" in text, text
    assert video_src(page, "vidguide_job_video").endswith(".mp4")
    seen = progress_seen(page)
    percentages = [int(found) for text in seen["texts"] for found in re.findall(r"(\d+)%", text)]
    # The resumed run's bar starts at the frames already done, not at zero.
    assert percentages and percentages[0] >= 100 * len(kept) // total - 1, seen
    job_row(page, job_id).filter(has_text="done").wait_for()
    page.shots.append(screenshot(page, "07-resumed"))

    manifest = site.manifest(job_id)
    assert manifest["status"] == "done" and manifest["frames_done"] == total
    assert {name: (site.jobs_dir / job_id / "frames" / name).read_bytes() for name in kept_bytes} == kept_bytes, \
        "a resume rewrote frames that were already finished"
    resumed = [np.asarray(Image.open(path)) for path in site.frame_files(job_id)]
    assert len(resumed) == total == len(expected)
    for index, (ours, theirs) in enumerate(zip(resumed, expected)):
        assert np.array_equal(ours, theirs), f"frame {index + 1} differs from the uninterrupted run's"

    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#vidguide_job_delete")
    page.locator("#vidguide_job_details [data-status]", has_text="Deleted job").wait_for()
    assert job_row(page, job_id).count() == 0
    assert not (site.jobs_dir / job_id).exists()


# --------------------------------------------------------------------------- the tab's functions, no browser


def test_settings_errors_name_the_control_and_say_what_is_allowed(webui):
    from lib_vidguide.webui import tab

    values = dict.fromkeys(tab.VIDEO_INPUT_NAMES)
    values.update(steps=0, denoising_strength=0.5, cfg_scale=7, sampler_name="Euler", strength=1.0,
                  schedule="seed_showcase", weight_mode="consistency", flow_method="dis_medium", warp_space="pixel",
                  first_frame_strength=0.3, first_frame_schedule="linear_decay", second_pass_strength=0.15,
                  general_threshold=0.35, character_threshold=0.85, tagger_placement="prepend", start_frame=0,
                  every_nth=1, crf=18, width=32)
    with pytest.raises(tab.TabInputError) as caught:
        tab.job_settings_from_values(values)
    message = str(caught.value)
    assert "Sampling steps:" in message and "Width:" in message, message
    values.update(steps=6, width=0, schedule="0:0.5, 2:0.5")
    with pytest.raises(tab.TabInputError, match="Schedule:"):
        tab.job_settings_from_values(values)
    values.update(schedule="constant", tagger_enabled=True, tagger_model="")
    with pytest.raises(tab.TabInputError, match="Tagger model: no tagger model chosen"):
        tab.job_settings_from_values(values)
    values.update(tagger_enabled=False)
    settings = tab.job_settings_from_values(values)
    assert settings.video.width is None and settings.video.seed == -1 and settings.img2img.steps == 6


def test_sources_outside_the_allowed_roots_or_ambiguous_are_refused(site):
    from lib_vidguide.webui import tab

    with pytest.raises(tab.TabInputError, match="outside the folders VidGuide may read"):
        tab.source_from_values(None, "/etc/hostname")
    with pytest.raises(tab.TabInputError, match="outside the folders"):
        tab.source_from_values(None, str(site.source.parent / ".." / ".." / "x.mp4"))
    with pytest.raises(tab.TabInputError, match="not both"):
        tab.source_from_values(str(site.source), str(site.source))
    with pytest.raises(tab.TabInputError, match="No source video"):
        tab.source_from_values(None, "  ")
    assert tab.source_from_values(None, str(site.source)) == (str(site.source.resolve()), False)
    assert tab.source_from_values("/tmp/gradio/x/clip.mp4", "") == ("/tmp/gradio/x/clip.mp4", True)


def test_a_bad_video_gives_a_message_not_a_traceback(site):
    from lib_vidguide.webui import tab

    bad = site.source.parent / "notes.mp4"
    bad.write_text("not a video")
    values = {name: None for name in tab.VIDEO_INPUT_NAMES}
    values.update(server_path=str(bad), steps=6, denoising_strength=0.5, cfg_scale=7, sampler_name="Euler",
                  strength=1.0, schedule="constant", weight_mode="consistency", flow_method="dis_medium",
                  warp_space="pixel", first_frame_strength=0.3, first_frame_schedule="linear_decay",
                  second_pass_strength=0.15, general_threshold=0.35, character_threshold=0.85,
                  tagger_placement="prepend", start_frame=0, every_nth=1, crf=18, width=64, height=64)
    before = site.job_ids()
    video, preview, status = tab.generate("task(test)", *[values[name] for name in tab.VIDEO_INPUT_NAMES])
    assert "data-status='error'" in status and "Traceback" not in status and "notes.mp4" in status, status
    assert site.job_ids() == before


def test_a_running_job_cannot_be_deleted_and_interrupt_targets_the_tab_job(site):
    from lib_vidguide.webui import tab
    from modules.shared import state

    assert tab.runs.request_stop() is None  # nothing runs: nothing to stop
    job_id = "20250101-120000-1a2b3c4d"
    tab.runs.start(job_id)
    try:
        kind, message = tab.delete_job(job_id)
        assert kind == "error" and "interrupt it first" in message
        tab.interrupt()
        assert tab.runs.stop_requested()
    finally:
        tab.runs.finish(job_id)
    assert not tab.runs.stop_requested()
    state.skipped = False
    tab.skip()
    assert state.skipped
    state.skipped = False


def test_the_page_serves_the_scripts_in_the_hosts_order(site):
    import requests

    page = requests.get(site.url + "/", timeout=30).text
    scripts = re.findall(r'<script type="text/javascript" src="\./standin-js/\d+/([^"]+)"', page)
    assert scripts == ["script.js", "inputAccordion.js", "progressbar.js", "vidguide.js"], scripts
    assert page.index("standin-js") < page.index("</head>")
    answer = requests.post(site.url + "/internal/progress", json={"id_task": "task(nothing)"}, timeout=30).json()
    assert answer == {"active": False, "queued": False, "completed": False, "progress": None, "eta": None,
                      "live_preview": None, "id_live_preview": -1, "textinfo": "Waiting..."}
