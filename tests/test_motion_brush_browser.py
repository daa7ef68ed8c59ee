"""The "Motion brush" sub-tab in a real browser: Debian's chromium, driven by Playwright, against the
gradio 3.41 stand-in page (tests/host/webui_page.py), with a tiny random-weight SVD in the WebUI's
models folder so that every run really samples, decodes and writes a video.

What it shows end to end (issue 4's acceptance "the sub-tab renders and a mask painted through
Playwright reaches the runner"): an image uploaded into gradio 3.41's sketch canvas and a stroke
painted over part of it with the mouse arrive at ``MotionBrushRunner.run`` as a mask that is painted
where the stroke went and nowhere else; the run finishes with the WebUI's progress bar and its
video in the page. With nothing painted, the page says the whole image moves.

Screenshots go to tests/artefacts/gradio<major>/ (mb-*.png, and FAILED-*.png for any failure).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("playwright.sync_api")
import browser_support  # noqa: E402

TIMEOUT_MS = browser_support.TIMEOUT_MS
IMAGE_SIZE = 128  # the picture uploaded (a multiple of 64: no resize, so the mask compares pixel for pixel)
# Tiny and quick: the tiny SVD was built for 4 frames.
RUN_SETTINGS = {"frames": 4, "steps": 2, "seed": 11}  # decode_chunk_size: the default 4
# The stroke, as fractions of the picture: a horizontal line in the right part, at mid-height.
STROKE_Y, STROKE_X0, STROKE_X1 = 0.5, 0.6, 0.9

needs_chromium = browser_support.needs_chromium


@dataclass
class Site:
    url: str
    data: Path
    picture: Path
    masks: list = field(default_factory=list)  # what MotionBrushRunner.run received, one per run

    @property
    def outputs(self) -> Path:
        return self.data / "outputs" / "vidguide" / "motion-brush"


def still_picture(size: int = IMAGE_SIZE) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(xx / 9.0), 128 + 100 * np.cos(yy / 7.0), 128 + 80 * np.sin((xx + yy) / 13.0)],
                   axis=-1)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def site(webui, tmp_path_factory):
    """The stand-in page over a private WebUI data folder with a tiny SVD in <models>/svd/tiny, and
    ``MotionBrushRunner.run`` wrapped to record the mask each run receives (then it runs for real)."""
    from lib_vidguide.svd_motion_brush import MotionBrushRunner, save_tiny_svd

    data = tmp_path_factory.mktemp("mb-browser") / "webui"
    with browser_support.private_webui(webui, data) as patch:
        save_tiny_svd(data / "models" / "svd" / "tiny")
        picture = data / "still.png"
        still_picture().save(picture)
        site = Site("", data, picture)
        original = MotionBrushRunner.run

        def recording_run(self, image, mask, settings=None, **kwargs):
            site.masks.append(mask)
            return original(self, image, mask, settings, **kwargs)

        patch.setattr(MotionBrushRunner, "run", recording_run)
        with browser_support.page_server(webui) as server:  # built now: its model dropdown lists this model
            site.url = server.url
            yield site


@pytest.fixture(scope="module")
def browser(site):
    with browser_support.chromium() as browser:
        yield browser


screenshot = browser_support.screenshot  # into tests/artefacts/gradio<major>/


@pytest.fixture
def page(browser, site, request, record_property):
    """A fresh page on the stand-in WebUI (nothing outside loopback is fetched); a screenshot if the
    test fails; no JavaScript error allowed."""
    viewport = {"width": 1400, "height": 1100}
    with browser_support.open_page(browser, site.url, request, record_property, viewport=viewport) as page:
        site.masks.clear()
        yield page


def open_motion_brush(page) -> None:
    browser_support.open_top_tab(page, "VidGuide")
    browser_support.open_sub_tab(page, "vidguide_tabs", "Motion brush")
    page.wait_for_selector("#vidguide_mb_run", state="visible")


set_number = browser_support.fill_box


def upload_picture(page, site: Site):
    """Upload the picture into the brush input; returns the canvas that takes the strokes, its brush
    tool selected: gradio 3's sketch canvas, or gradio 4's ImageEditor canvas once "Draw" is chosen
    (after an upload its tool is the background's, as a Forge user finds it)."""
    from webui_page import gradio_major

    page.set_input_files("#vidguide_mb_image input[type=file]", str(site.picture))
    if gradio_major() >= 4:
        canvas = page.locator("#vidguide_mb_image canvas").first
    else:
        canvas = page.locator("#vidguide_mb_image canvas[key=interface]")
    canvas.wait_for(state="visible")
    # The preview follows the upload (the brush input's change event).
    page.wait_for_selector("#vidguide_mb_mask_preview img")
    return canvas


def choose_brush(page) -> Optional[float]:
    """Selects the brush where there is a tool to select (gradio 4's "Draw"); returns the brush's
    radius in picture pixels, from its size slider, or None where the brush is sized on screen (gradio 3)."""
    from webui_page import gradio_major

    if gradio_major() < 4:
        return None
    page.click("#vidguide_mb_image button[aria-label='Draw button']")
    size = page.locator("#vidguide_mb_image input[type=range]")
    size.wait_for(state="visible")
    return float(size.input_value())


def paint_stroke(page, canvas) -> dict:
    """A horizontal stroke with the mouse, in small steps as a hand moves (gradio's lazy brush
    trails the pointer); returns the canvas box it was painted on and the brush's reach in picture
    pixels (gradio 3: about 20 screen pixels wide, its default; gradio 4: its size slider), plus slack."""
    radius = choose_brush(page)
    box = canvas.bounding_box()
    assert box and box["width"] > 50, box
    y = box["y"] + STROKE_Y * box["height"]
    page.mouse.move(box["x"] + STROKE_X0 * box["width"], y)
    page.mouse.down()
    steps = 30
    for index in range(steps + 1):
        x = box["x"] + (STROKE_X0 + (STROKE_X1 - STROKE_X0) * index / steps) * box["width"]
        page.mouse.move(x, y)
    page.mouse.up()
    reach = radius if radius is not None else 20 * IMAGE_SIZE / box["width"]
    return {**box, "reach": int(np.ceil(reach)) + 3}


def fill_run_settings(page) -> None:
    for name, value in RUN_SETTINGS.items():
        set_number(page, f"vidguide_mb_{name}", value)


def wait_status(page, statuses: tuple[str, ...]) -> str:
    return browser_support.wait_status(page, "vidguide_mb_status", statuses, TIMEOUT_MS)


def watch_progress(page) -> None:
    """Record, in the page (``window.__mb.texts``), every progress-bar text the sub-tab shows."""
    browser_support.watch_progress(page, "#vidguide_motion_brush_tab", "__mb")


def mask_values(mask) -> np.ndarray:
    from lib_vidguide.motion_brush import mask_to_array

    return mask_to_array(mask, size=(IMAGE_SIZE, IMAGE_SIZE))


# --------------------------------------------------------------------------- the browser


@needs_chromium
def test_the_motion_brush_sub_tab_renders(page):
    open_motion_brush(page)
    for elem_id in ("vidguide_mb_image", "vidguide_mb_mask_preview", "vidguide_mb_model", "vidguide_mb_model_refresh",
                    "vidguide_mb_frames", "vidguide_mb_steps", "vidguide_mb_motion_bucket_id", "vidguide_mb_seed",
                    "vidguide_mb_run", "vidguide_mb_interrupt", "vidguide_mb_result_video", "vidguide_mb_status"):
        # (gradio 3 repeats an HTML component's elem_id on its inner block: one or two.)
        assert page.locator(f"#vidguide_motion_brush_tab #{elem_id}").count() >= 1, f"#{elem_id} is missing"
    assert page.evaluate("() => typeof vidguideMotionBrushSubmit") == "function"
    assert page.input_value("#vidguide_mb_model input") == "tiny"  # the folder in <models>/svd
    assert "sampling step" in (page.get_attribute("#vidguide_mb_interrupt", "title") or "")
    # The model settings' descriptions are the controls' help texts.
    assert "SVD's motion amount" in page.inner_text("#vidguide_mb_motion_bucket_id")
    screenshot(page, "mb-01-motion-brush-tab")


@needs_chromium
def test_a_painted_mask_reaches_the_runner_and_the_video_appears(page, site):
    before = set(site.outputs.glob("*.mp4")) if site.outputs.exists() else set()
    open_motion_brush(page)
    canvas = upload_picture(page, site)
    fill_run_settings(page)
    box = paint_stroke(page, canvas)
    # The preview dims the still part once the stroke is in: its notes say how much may move.
    page.wait_for_selector("#vidguide_mb_notes :text('may move; the dimmed part stays still')")
    screenshot(page, "mb-02-painted")
    watch_progress(page)
    page.click("#vidguide_mb_run")

    page.wait_for_selector("#vidguide_motion_brush_tab .progressDiv", timeout=30_000)
    text = wait_status(page, ("done",))
    assert "Done: 4 frames at 128x128" in text and "Time taken" in text, text
    assert "whole image" not in text, text
    page.wait_for_selector("#vidguide_mb_result_video video[src]")
    assert (page.get_attribute("#vidguide_mb_result_video video", "src") or "").endswith(".mp4")
    page.wait_for_selector("#vidguide_motion_brush_tab .progressDiv", state="detached")
    texts = page.evaluate("() => window.__mb.texts")
    assert any(re.search(r"\d+%", text) for text in texts), f"no progress percentage shown: {texts}"
    screenshot(page, "mb-03-done")

    # The mask that reached the runner: painted along the stroke, nothing anywhere else.
    assert len(site.masks) == 1
    moving = mask_values(site.masks[0]) > 0.5
    assert moving.any(), "the runner got an empty mask"
    rows, cols = np.nonzero(moving)
    reach = box["reach"]
    y, x0, x1 = (int(round(f * IMAGE_SIZE)) for f in (STROKE_Y, STROKE_X0, STROKE_X1))
    assert rows.min() >= y - reach and rows.max() <= y + reach, (rows.min(), rows.max(), y, reach)
    assert cols.min() >= x0 - reach and cols.max() <= x1 + reach, (cols.min(), cols.max(), x0, x1, reach)
    assert moving[y, (x0 + x1) // 2], "the middle of the stroke is not painted"
    assert moving[y, x0 + 4:x1 - 4].all(), "the stroke has gaps"
    assert not moving[:, : x0 - reach].any() and not moving[: y - reach].any()

    (video,) = set(site.outputs.glob("*.mp4")) - before
    assert re.fullmatch(r"\d{8}-\d{6}-11\.mp4", video.name), video.name  # <timestamp>-<seed>
    assert len(list((site.outputs / video.stem).glob("frame_*.png"))) == 4


@needs_chromium
def test_nothing_painted_says_the_whole_image_moves(page, site):
    open_motion_brush(page)
    upload_picture(page, site)
    page.wait_for_selector("#vidguide_mb_notes :text('Nothing painted: the whole image moves')")
    fill_run_settings(page)
    page.click("#vidguide_mb_run")
    text = wait_status(page, ("done",))
    assert "No motion mask was painted: the whole image may move" in text, text
    assert len(site.masks) == 1
    assert not (mask_values(site.masks[0]) > 0.5).any()  # a blank mask, not an error
    screenshot(page, "mb-04-nothing-painted")


@needs_chromium
def test_interrupt_from_the_page_stops_the_run_and_writes_nothing(page, site, monkeypatch):
    """Sampling waits after its first step until Interrupt is pressed; the run then stops there."""
    from lib_vidguide.webui import motion_brush_host
    from modules.shared import state

    reached = threading.Event()
    original = motion_brush_host.run_here

    def slow_first_step(*args, **kwargs):
        def on_progress(step, steps):
            if step == 1:
                reached.set()
                deadline = time.time() + 30
                while not state.interrupted and time.time() < deadline:
                    time.sleep(0.02)

        return original(*args, on_progress=on_progress, **kwargs)

    monkeypatch.setattr(motion_brush_host, "run_here", slow_first_step)
    before = sorted(site.outputs.rglob("*")) if site.outputs.exists() else []
    open_motion_brush(page)
    paint_stroke(page, upload_picture(page, site))
    fill_run_settings(page)
    page.click("#vidguide_mb_run")
    assert browser_support.wait_for_event(page, reached, 60), "the run never reached its first step"
    page.click("#vidguide_mb_interrupt")
    text = wait_status(page, ("interrupted",))
    assert "nothing was written" in text, text
    after = sorted(site.outputs.rglob("*")) if site.outputs.exists() else []
    assert after == before
    screenshot(page, "mb-05-interrupted")
