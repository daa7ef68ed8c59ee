"""What the browser tests share: Debian's chromium driven by Playwright on the stand-in page
(tests/host/webui_page.py, gradio 3.41 as A1111 or 4.40 as Forge), nothing fetched outside
loopback, no JavaScript error allowed, screenshots in tests/artefacts/gradio<major>/, and the
walk that opens a UI's accordions and checks each control is visible and enabled."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterable, Iterator, Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")

# gradio 4's interactive Video loads ffmpeg.wasm from unpkg.com once it holds a video (for its trim
# tool); offline, that fetch fails as an unhandled rejection inside gradio's own Video chunk. A
# Forge user without internet sees the same; it is gradio's, not the page's, so it is not counted.
GRADIO4_OFFLINE_FFMPEG = ("unpkg.com/@ffmpeg/", "/assets/Video-")


def artefact(name: str) -> Path:
    from webui_page import artefacts_dir

    return artefacts_dir() / f"{name}.png"


def screenshot(page, name: str) -> Path:
    path = artefact(name)
    page.screenshot(path=str(path), full_page=True)
    return path


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def errors_that_count(errors: list[tuple[str, str]], failed_requests: list[str]) -> list[str]:
    """The page errors, less gradio 4's offline ffmpeg fetch (see GRADIO4_OFFLINE_FFMPEG)."""
    ffmpeg_blocked = any(GRADIO4_OFFLINE_FFMPEG[0] in url for url in failed_requests)
    return [f"{message} {stack.splitlines()[1:3]}" for message, stack in errors
            if not (ffmpeg_blocked and message == "Failed to fetch" and GRADIO4_OFFLINE_FFMPEG[1] in stack)]


@contextlib.contextmanager
def open_page(browser, url: str, request, record_property, *, viewport: Optional[dict] = None) -> Iterator[object]:
    """A fresh page on the stand-in WebUI at ``url`` (requests outside it are refused), waited until
    its tabs exist; on leaving, a FAILED-<test>.png if the test failed, the page's screenshots
    (``page.shots``) recorded as test properties, and an error if JavaScript failed."""
    context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[tuple[str, str]] = []
    failed_requests: list[str] = []
    page.on("pageerror", lambda error: errors.append((str(error.message), error.stack or "")))
    page.on("requestfailed", lambda req: failed_requests.append(f"{req.method} {req.url}: {req.failure}"))
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith((url, "data:", "blob:"))
               else route.abort())
    failed_before = request.session.testsfailed
    page.goto(url + "/")
    page.wait_for_selector("#tabs")
    page.shots = []
    try:
        yield page
    finally:
        if request.session.testsfailed > failed_before:
            path = screenshot(page, f"FAILED-{request.node.name}")
            record_property("failure_screenshot", str(path))
            print(f"failure screenshot: {path}")
        for index, shot in enumerate(page.shots):
            record_property(f"screenshot_{index}", str(shot))
        context.close()
    counted = errors_that_count(errors, failed_requests)
    assert counted == [], f"JavaScript errors on the page: {counted}; failed requests: {failed_requests}"


def wait_for_event(page, event, seconds: float) -> bool:
    """``event.wait(seconds)`` that keeps Playwright's loop turning. The page's requests go through the
    route handler, which runs in this thread: blocking it stalls every request (gradio 4's queue is
    fetch/SSE, not gradio 3's websocket, so a run clicked just before would never start)."""
    deadline = time.monotonic() + seconds
    while not event.is_set() and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    return event.is_set()


@contextlib.contextmanager
def private_webui(webui, data: Path, *, default_allowed_roots: bool = False) -> Iterator[pytest.MonkeyPatch]:
    """The stand-in WebUI over the data folder ``data`` (models in ``data/models``), API auth off and, with
    ``default_allowed_roots``, the default allowed roots (its outputs and vidguide-inputs). Yields the
    MonkeyPatch for more; on leaving, every patch is undone and the WebUI reset."""
    from modules import paths_internal, shared

    patch = pytest.MonkeyPatch()
    try:
        patch.setattr(paths_internal, "data_path", str(data))
        patch.setattr(paths_internal, "models_path", str(data / "models"))
        patch.setattr(shared.cmd_opts, "api_auth", None, raising=False)
        if default_allowed_roots:
            patch.setattr(shared.cmd_opts, "vidguide_allowed_roots", "", raising=False)
        yield patch
    finally:
        patch.undo()
        webui.reset()


@contextlib.contextmanager
def page_server(webui) -> Iterator[object]:
    """The WebUI reset, then the stand-in page on loopback (its tabs are built now: after what the test
    put in place); stopped on leaving."""
    from webui_page import PageServer

    webui.reset()
    server = PageServer.start([REPO])
    try:
        yield server
    finally:
        server.stop()


def fill_box(page, elem_id: str, value) -> None:
    """Types ``value`` into the control's number or text box, then Tab (gradio takes number values on blur too)."""
    box = page.locator(f"#{elem_id}").locator("input[type=number], textarea, input[type=text]").first
    box.fill(str(value))
    box.press("Tab")


def wait_status(page, elem_id: str, statuses: tuple[str, ...], timeout_ms: int = TIMEOUT_MS) -> str:
    """Waits for the status HTML ``elem_id`` to show one of ``statuses`` (or an error) and asserts it is one
    of ``statuses``; returns its text."""
    selector = ", ".join(f"#{elem_id} [data-status='{status}']" for status in (*statuses, "error"))
    page.wait_for_selector(selector, timeout=timeout_ms)
    text = page.inner_text(f"#{elem_id}")
    status = page.get_attribute(f"#{elem_id} [data-status]", "data-status")
    assert status in statuses, f"expected {statuses}, the page says: {text}"
    return text


def watch_progress(page, tab_selector: str, store: str) -> None:
    """Record, in the page's ``window[store].texts``, every progress-bar text shown under ``tab_selector``."""
    page.evaluate("""([tab, store]) => {
        window[store] = {texts: []};
        new MutationObserver(() => {
            const root = typeof gradioApp === 'function' ? gradioApp() : document;
            const bar = root.querySelector(tab + ' .progressDiv .progress');
            const seen = window[store].texts;
            if (bar && bar.textContent && seen[seen.length - 1] !== bar.textContent) seen.push(bar.textContent);
        }).observe(document.body, {subtree: true, childList: true, characterData: true});
    }""", [tab_selector, store])


def open_top_tab(page, label: str) -> None:
    page.click(f"#tabs > .tab-nav button:has-text('{label}')")


def open_sub_tab(page, tabs_id: str, label: str) -> None:
    page.click(f"#{tabs_id} > .tab-nav button:has-text('{label}')")


def open_accordion(page, elem_id: str, first_inside: Optional[str] = None) -> None:
    """Opens the accordion ``elem_id`` unless it is open (what's inside it, ``first_inside``, visible)."""
    accordion = page.locator(f"#{elem_id}").first
    accordion.scroll_into_view_if_needed()
    inside = page.locator(f"#{first_inside}").first if first_inside else None
    if inside is not None and inside.is_visible():
        return
    accordion.locator(".label-wrap").first.click()
    if inside is not None:
        inside.wait_for(state="visible", timeout=10_000)


# Laid out on the page (no display:none or visibility:hidden on it or above it), even with no height.
_DISPLAYED_JS = """(id) => {
    const root = typeof gradioApp === 'function' ? gradioApp() : document;
    const block = root.querySelector('#' + id);
    return !!block && block.getClientRects().length > 0 && getComputedStyle(block).visibility !== 'hidden';
}"""

# In a control's block, the element that takes the user's input (gradio 3 and 4 alike).
_ENABLED_JS = """(id) => {
    const root = typeof gradioApp === 'function' ? gradioApp() : document;
    const block = root.querySelector('#' + id);
    if (!block) return 'missing';
    const tags = ['BUTTON', 'INPUT', 'TEXTAREA', 'SELECT'];
    // In this order: an image editor's first button (Undo) is disabled until a stroke, its file input is not.
    const inner = ['input:not([type=hidden])', 'textarea', 'select', 'button', 'canvas']
        .map((selector) => block.querySelector(selector)).find((found) => found);
    const target = tags.includes(block.tagName) ? block : inner;
    if (!target) return 'no input element';
    if (target.disabled || target.getAttribute('aria-disabled') === 'true') return 'disabled';
    return 'ok';
}"""


def check_controls(page, controls: Iterable, *, where: str) -> list[str]:
    """Each control (ui_expectations.Control) visible, once its accordions are open, and each input or
    button enabled; returns the problems found (empty = all fine)."""
    problems: list[str] = []
    controls = list(controls)
    opened: set[str] = set()
    for control in controls:
        for index, accordion in enumerate(control.accordions):
            if accordion not in opened:
                inner = control.accordions[index + 1] if index + 1 < len(control.accordions) else control.elem_id
                open_accordion(page, accordion, inner)
                opened.add(accordion)
        locator = page.locator(f"{where} #{control.elem_id}").first
        if locator.count() == 0:
            problems.append(f"#{control.elem_id}: not on the page")
            continue
        # An empty output (an HTML status before any run) has no height: displayed is enough for it.
        shown = locator.is_visible() if control.kind != "output" else page.evaluate(_DISPLAYED_JS, control.elem_id)
        if not shown:
            problems.append(f"#{control.elem_id}: not visible")
            continue
        locator.scroll_into_view_if_needed()
        if control.kind in ("input", "button"):
            state = page.evaluate(_ENABLED_JS, control.elem_id)
            if state != "ok":
                problems.append(f"#{control.elem_id} ({control.kind}): {state}")
    return problems
