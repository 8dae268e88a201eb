"""The whole workflow in a real browser (Playwright + Debian's Chromium), with screenshots.

create on tiny -> upload images -> preprocess with tiny BLIP captions -> the Train tab's essentials
fit the first screen -> train 10 steps with previews every 5 -> loss points and previews appear ->
download the .safetensors -> the same Start says why nothing was trained -> a long run: reload
restores the form and re-attaches, interrupt, resume on one timeline -> an interrupt during a long
preview stops it -> a skipped library row shows its reason without an error -> PNG export -> Generate.
"""

import re
import time

import pytest

from tests.browser_fixtures import fill, images_loaded, open_app, pick, shot
from tests.ui_fixtures import make_images

pytest_plugins = ["tests.browser_fixtures", "tests.ui_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def test_full_workflow_in_browser(browser, app, tmp_path):
    from playwright.sync_api import expect

    from embeddings.formats import load_embedding

    page = open_app(browser, app, accept_downloads=True,
                    init_script="window.tiFrames = 0; { const raf = window.requestAnimationFrame; "
                                "window.requestAnimationFrame = (f) => { window.tiFrames++; return raf(f); }; }")
    # An idle page asks for (almost) no animation frames once the load's events are done: Gradio's
    # loading overlay used to leave a 60-a-second loop running for good (ui/gradio_fixes.py), which
    # would count 120 in every 2 s below.
    counts = []
    for _ in range(8):
        frames = page.evaluate("window.tiFrames")
        time.sleep(2)
        counts.append(page.evaluate("window.tiFrames") - frames)
        if counts[-1] < 20:
            break
    assert counts[-1] < 20, f"animation frames per 2 s on an idle page: {counts}"

    # --- Create: the plan shows live, then the file is written ------------------------------------
    fill(page, "create_name", "bcat")
    fill(page, "create_init", "cat toy")
    expect(page.locator("#create_plan")).to_contain_text("2 token(s)", timeout=90_000)
    page.locator("#create_btn").click()
    expect(page.locator("#create_result")).to_contain_text("Created", timeout=240_000)  # the first model load
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
    expect(page.locator("#pre_files")).to_contain_text(re.compile(r"img0\s*\.png"), timeout=90_000)
    fill(page, "pre_width", "64")
    fill(page, "pre_height", "64")
    pick(page, "pre_captioner", "blip")
    pick(page, "pre_blip_model", "tiny-blip")
    page.locator("#pre_run").click()
    expect(page.locator("#pre_status")).to_contain_text("finished", timeout=180_000)
    expect(page.locator("#pre_grid")).to_contain_text("img0", timeout=90_000)
    caps = sorted((app.data.datasets / "bset").glob("*.txt"))
    assert len(caps) == 3 and all(c.read_text().strip() for c in caps)
    shot(page, "preprocess")

    # --- Train: the essentials and Start fit the first screen; resolution follows the model -------
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_start")).to_be_visible(timeout=90_000)
    assert page.evaluate("window.scrollY") == 0
    for elem in ("train_start", "train_interrupt", "train_resume", "train_embedding", "train_dataset", "train_model",
                 "train_lr", "train_max_steps", "train_preview_every", "train_save_every"):
        box = page.locator(f"#{elem}").bounding_box()
        assert box is not None and box["y"] + box["height"] <= 1000, f"#{elem} is below the first screen: {box}"
    assert page.locator("#train_resolution input").input_value() == "64"  # tiny's native size, not 512
    expect(page.locator("#train_loss_canvas")).to_be_visible()  # says what will appear there (drawn text)

    # --- Train: 10 steps, previews every 5, loss and previews appear --------------------------------
    pick(page, "train_embedding", "bcat")
    pick(page, "train_dataset", "bset")
    expect(page.locator("#train_dataset_check")).to_contain_text("3 image(s)", timeout=90_000)
    fill(page, "train_lr", "0.01")
    fill(page, "train_max_steps", "10")
    fill(page, "train_preview_every", "5")
    fill(page, "train_save_every", "5")
    page.get_by_text("Advanced", exact=True).click()
    fill(page, "train_preview_steps", "2")
    expect(page.locator("#train_lr_msg")).to_contain_text("stops at step 10", timeout=90_000)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("finished", timeout=240_000)
    expect(page.locator("#train_status")).to_contain_text("step 10/10")
    expect(page.locator("#train_previews img")).to_have_count(2, timeout=90_000)
    images_loaded(page, "train_previews")  # served and decoded, not just <img> tags
    expect(page.locator("#train_log")).to_contain_text("training finished at step 10")
    page.wait_for_function("() => (window.tiCharts.series().loss.smoothed || []).length === 10", timeout=90_000)
    page.get_by_text("Advanced", exact=True).click()  # closed again: the dashboard as a person sees it
    shot(page, "train")

    link = page.locator("#train_downloads tr", has_text=re.compile(r"\.safetensors")).locator("a")
    with page.expect_download() as dl:
        link.first.click()
    got = tmp_path / "dl.safetensors"
    dl.value.save_as(got)
    assert load_embedding(got).step == 10

    # --- the same Start again: the page says why nothing was trained --------------------------------
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("Nothing trained", timeout=120_000)
    expect(page.locator("#train_status")).to_contain_text("already at step 10")
    expect(page.locator("#train_log li").first).to_contain_text("nothing to train")  # newest first

    # --- a long run: reload restores the form and re-attaches; interrupt; resume on one timeline ------
    fill(page, "train_max_steps", "5000")
    fill(page, "train_preview_every", "0")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"running · step \d+/5000"), timeout=120_000)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_status")).to_contain_text("running", timeout=90_000)  # re-attached
    expect(page.locator("#train_max_steps input")).to_have_value("5000", timeout=90_000)  # the run's settings
    expect(page.locator("#train_embedding input")).to_have_value("bcat")
    expect(page.locator("#train_dataset input")).to_have_value("bset")
    # the page polls with one small request every POLL_SECONDS while the Train tab is shown, none elsewhere
    polls: list[str] = []
    page.on("request", lambda r: polls.append(r.url) if "gradio_api/run/train_live" in r.url else None)
    page.wait_for_timeout(5000)  # (Playwright hands over the requests while it waits)
    assert len(polls) >= 2
    page.get_by_role("tab", name="Create").click()
    page.wait_for_timeout(1000)
    polls.clear()
    page.wait_for_timeout(3000)
    assert polls == []
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"running · step \d+/5000"), timeout=30_000)
    page.get_by_role("button", name="Interrupt", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("interrupted", timeout=120_000)
    stopped_at = int(re.search(r"step (\d+)/5000", page.locator("#train_status").inner_text()).group(1))
    page.get_by_role("button", name="Resume", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"resume .* running · step \d+/5000"),
                                                          timeout=120_000)
    page.wait_for_function(f"() => (window.tiCharts.series().loss.loss || []).some(p => p[0] > {stopped_at})",
                           timeout=60_000)
    steps = page.evaluate("() => window.tiCharts.series().loss.loss.map(p => p[0])")
    assert steps[0] == 11 and stopped_at in steps  # one timeline: bcat was at 10, the resumed part follows on
    page.get_by_role("button", name="Interrupt", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("interrupted", timeout=120_000)

    # --- an interrupt during a long preview stops it, then saves ---------------------------------------
    page.get_by_text("Advanced", exact=True).click()
    fill(page, "train_preview_every", "1")
    fill(page, "train_preview_steps", "999")
    fill(page, "train_preview_width", "256")
    fill(page, "train_preview_height", "256")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text(re.compile(r"running · preview 1/1"), timeout=120_000)
    asked = time.monotonic()
    page.get_by_role("button", name="Interrupt", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("interrupted", timeout=120_000)
    assert time.monotonic() - asked < 20, "the preview in progress was not stopped"
    expect(page.locator("#train_log")).to_contain_text("stopped by the interrupt")
    fill(page, "train_preview_every", "0")

    # --- Embeddings: the table, and a PNG export that loads ------------------------------------------
    (app.data.embeddings / "broken.pt").write_bytes(b"not an embedding")
    page.get_by_role("tab", name="Embeddings").click()
    expect(page.locator("#emb_table")).to_contain_text("bcat", timeout=90_000)
    page.locator("#emb_table").get_by_role("gridcell", name="broken", exact=True).first.click()  # a skipped row: its reason, calmly
    expect(page.locator("#emb_summary")).to_contain_text("skipped:", timeout=90_000)
    expect(page.locator(".toast-body")).to_have_count(0)
    expect(page.locator("#emb_norms, #emb_summary").get_by_text("Error", exact=True)).to_have_count(0)
    pick(page, "emb_pick", "bcat")
    expect(page.locator("#emb_summary")).to_contain_text("bcat", timeout=90_000)
    pick(page, "emb_fmt", "PNG with the embedding inside")
    page.locator("#emb_export").click()
    link = page.locator("#emb_download tr", has_text=re.compile(r"\.png")).locator("a")
    expect(link.first).to_be_visible(timeout=90_000)
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
    expect(page.locator("#gen_gallery img").first).to_be_visible(timeout=90_000)
    images_loaded(page, "gen_gallery")
    expect(page.locator("#gen_info")).to_contain_text("noise by design")  # tiny images are noise, said plainly
    shot(page, "generate")
    page.close()
