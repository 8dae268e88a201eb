"""Fixtures and page helpers for the browser tests (Playwright + Debian's Chromium).

A test module uses them with `pytest_plugins = ["tests.browser_fixtures", "tests.ui_fixtures"]`
(the `browser` fixture here and the running `app` there, one of each per module) and imports the
page helpers (`open_app`, `fill`, `pick`, `shot`, `images_loaded`) from here, so every browser test drives
Gradio's widgets the same way.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def open_app(browser, app, height: int = 1000, init_script: str | None = None, **page_kwargs):
    """A new 1400 px wide page on the running app, returned once its tabs show. `init_script` runs
    in the page before the app's own scripts (e.g. to count animation frames)."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": height}, **page_kwargs)
    if init_script:
        page.add_init_script(init_script)
    page.goto(app.url)
    expect(page.get_by_role("tab", name="Create")).to_be_visible(timeout=90_000)
    return page


def shot(page, name: str) -> None:
    """A full-page screenshot in test-artifacts/ (docs/screenshots/ are copied from there)."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, value: str) -> None:
    """Choose a value in a Gradio dropdown by typing it and pressing Enter."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    box.press("Enter")
    page.keyboard.press("Escape")


def fill(page, elem_id: str, value: str) -> None:
    """Type into a Gradio textbox or number field and leave it, so its change event fires."""
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def images_loaded(page, elem_id: str, timeout: float = 60_000) -> None:
    """Wait until every <img> under the element has loaded with real pixels (a broken file URL
    leaves naturalWidth 0), so the screenshots show the pictures too. Gallery images load lazily, so
    each is scrolled into view first."""
    for img in page.locator(f"#{elem_id} img").all():
        img.scroll_into_view_if_needed()
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            """(id) => { const imgs = [...document.querySelectorAll(`#${id} img`)];
                         return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }""",
            arg=elem_id, timeout=timeout)
    except PlaywrightTimeout:
        states = page.evaluate("""(id) => [...document.querySelectorAll(`#${id} img`)].map(
            i => ({src: i.src.slice(-80), complete: i.complete, w: i.naturalWidth, loading: i.loading}))""", elem_id)
        raise AssertionError(f"images in #{elem_id} did not load: {states}") from None
