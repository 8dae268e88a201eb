"""The whole workflow in a real browser (Playwright + Debian's Chromium), with screenshots.

create on tiny -> upload images -> preprocess with tiny BLIP captions -> train 10 steps with
previews every 5 -> loss points and previews appear -> download the .safetensors (Train) and a
PNG (Embeddings export) and load both -> interrupt / reload re-attaches / resume.
"""

import re
import shutil
from pathlib import Path

import pytest

from tests.ui_fixtures import make_images, running_app

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def app(tmp_path_factory, shared_data):
    from workspace.datadir import DataDir

    dd = DataDir.at(tmp_path_factory.mktemp("browser") / "data").ensure()
    dd.cache.rmdir()
    dd.cache.symlink_to(shared_data.cache, target_is_directory=True)
    with running_app(dd) as running:
        yield running


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def pick(page, elem_id: str, value: str) -> None:
    """Choose a value in a Gradio dropdown by typing it and pressing Enter."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    box.press("Enter")
    page.keyboard.press("Escape")


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


def fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.press("Tab")


def test_full_workflow_in_browser(browser, app, tmp_path):
    from playwright.sync_api import expect

    from embeddings.formats import load_embedding

    page = browser.new_page(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    page.goto(app.url)
    expect(page.get_by_role("tab", name="Create")).to_be_visible(timeout=30_000)

    # --- Create: the plan shows live, then the file is written ------------------------------------
    fill(page, "create_name", "bcat")
    fill(page, "create_init", "cat toy")
    expect(page.locator("#create_plan")).to_contain_text("2 token(s)", timeout=20_000)
    page.locator("#create_btn").click()
    expect(page.locator("#create_result")).to_contain_text("Created", timeout=60_000)
    assert (app.data.embeddings / "bcat.safetensors").is_file()
    shot(page, "create")

    # --- Preprocess: drop a folder (our JS walks it) and caption with tiny BLIP --------------------
    page.get_by_role("tab", name="Preprocess").click()
    src = tmp_path / "photos"
    make_images(src / "sub", n=2, size=96, seed=1)
    make_images(src, n=1, size=96, seed=2)
    (src / "notes.txt").write_text("not an image")
    fill(page, "pre_name", "bset")
    # Chromium cannot fake a dropped *folder* from outside, so hand the handler a real entry tree
    # built from the files (as webkitGetAsEntry would) and let it upload into the component.
    files = sorted(p for p in src.rglob("*") if p.is_file())
    payload = [{"rel": str(p.relative_to(src)), "b64": __import__("base64").b64encode(p.read_bytes()).decode()}
               for p in files]
    count = page.evaluate(
        """async (items) => {
            const dir = (name, children) => ({isDirectory: true, isFile: false, name,
                createReader() { let done = false; return {readEntries(ok) { ok(done ? [] : children); done = true; }}; }});
            const file = (name, b64) => ({isFile: true, isDirectory: false, name,
                file(ok) { const bin = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                           ok(new File([bin], name, {type: name.endsWith('.png') ? 'image/png' : 'text/plain'})); }});
            const top = [], sub = [];
            for (const it of items) {
                const parts = it.rel.split('/');
                (parts.length > 1 ? sub : top).push(file(parts[parts.length - 1], it.b64));
            }
            top.push(dir('sub', sub));
            const zone = document.querySelector('#pre_files');
            return await window.tiFolderDrop.handleEntries(zone, [dir('photos', top)]);
        }""",
        payload,
    )
    assert count == 3  # the .txt file was left out, the subfolder walked
    expect(page.locator("#pre_files")).to_contain_text("img0.png", timeout=30_000)
    fill(page, "pre_width", "64")
    fill(page, "pre_height", "64")
    pick(page, "pre_captioner", "blip")
    pick(page, "pre_blip_model", "tiny-blip")
    page.locator("#pre_run").click()
    expect(page.locator("#pre_status")).to_contain_text("finished", timeout=180_000)
    expect(page.locator("#pre_grid")).to_contain_text("img0", timeout=30_000)
    caps = sorted((app.data.datasets / "bset").glob("*.txt"))
    assert len(caps) == 3 and all(c.read_text().strip() for c in caps)
    shot(page, "preprocess")

    # --- Train: 10 steps, previews every 5, loss and previews appear --------------------------------
    page.get_by_role("tab", name="Train").click()
    pick(page, "train_embedding", "bcat")
    pick(page, "train_dataset", "bset")
    expect(page.locator("#train_dataset_check")).to_contain_text("3 image(s)", timeout=30_000)
    fill(page, "train_lr", "0.01")
    fill(page, "train_max_steps", "10")
    fill(page, "train_preview_every", "5")
    fill(page, "train_save_every", "5")
    fill(page, "train_resolution", "64")
    page.get_by_text("Advanced", exact=True).click()
    fill(page, "train_preview_steps", "2")
    expect(page.locator("#train_lr_msg")).to_contain_text("stops at step 10", timeout=20_000)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("finished", timeout=240_000)
    expect(page.locator("#train_status")).to_contain_text("step 10/10")
    expect(page.locator("#train_previews img")).to_have_count(2, timeout=30_000)
    images_loaded(page, "train_previews")  # served and decoded, not just <img> tags
    expect(page.locator("#train_loss canvas, #train_loss svg").first).to_be_visible(timeout=30_000)
    expect(page.locator("#train_loss")).to_contain_text("smoothed", timeout=30_000)  # the legend has both lines
    shot(page, "train")

    link = page.locator("#train_downloads tr", has_text=re.compile(r"\.safetensors")).locator("a")
    with page.expect_download() as dl:
        link.first.click()
    got = tmp_path / "dl.safetensors"
    dl.value.save_as(got)
    assert load_embedding(got).step == 10

    # --- Interrupt, reload (re-attach), resume -------------------------------------------------------
    fill(page, "train_max_steps", "5000")
    fill(page, "train_preview_every", "0")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"running · step \d+/"), timeout=120_000)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_status")).to_contain_text("running", timeout=30_000)  # re-attached
    page.get_by_role("button", name="Interrupt", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("interrupted", timeout=120_000)
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"resume .* running"), timeout=120_000)
    page.get_by_role("button", name="Interrupt", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("interrupted", timeout=120_000)

    # --- Embeddings: the table, and a PNG export that loads ------------------------------------------
    page.get_by_role("tab", name="Embeddings").click()
    expect(page.locator("#emb_table")).to_contain_text("bcat", timeout=30_000)
    pick(page, "emb_pick", "bcat")
    expect(page.locator("#emb_summary")).to_contain_text("bcat", timeout=30_000)
    pick(page, "emb_fmt", "PNG with the embedding inside")
    page.locator("#emb_export").click()
    link = page.locator("#emb_download tr", has_text=re.compile(r"\.png")).locator("a")
    expect(link.first).to_be_visible(timeout=30_000)
    with page.expect_download() as dl:
        link.first.click()
    png = tmp_path / "dl.png"
    dl.value.save_as(png)
    assert load_embedding(png).equal(app.ctx.library(None).get("bcat"))  # the PNG carries the exact vectors
    shot(page, "embeddings")

    # --- Generate --------------------------------------------------------------------------------------
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen_prompt", "a photo of bcat")
    fill(page, "gen_steps", "2")
    page.locator("#gen_btn").click()
    expect(page.locator("#gen_info")).to_contain_text("Embeddings used:", timeout=60_000)
    expect(page.locator("#gen_info")).to_contain_text("bcat")
    expect(page.locator("#gen_gallery img").first).to_be_visible(timeout=30_000)
    images_loaded(page, "gen_gallery")
    expect(page.locator("#gen_info")).to_contain_text("noise by design")  # tiny images are noise, said plainly
    shot(page, "generate")
    page.close()
