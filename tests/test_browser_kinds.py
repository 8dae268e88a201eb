"""A per-layer embedding through the whole app in a real browser (Playwright + Debian's Chromium).

Create a per-layer embedding (and a standard one for the style) on tiny -> train it 4 steps: the
live heat map (layer group x vector) and a preview appear -> download the .safetensors (kind
per-layer) -> Generate a style-mixing row. The dataset is written to the data folder directly
(the Preprocess tab has its own browser test), so the run is short.
"""

import re

import pytest

from tests.browser_fixtures import fill, open_app, pick, shot
from tests.ui_fixtures import make_images

STEPS = 4

pytest_plugins = ["tests.browser_fixtures", "tests.ui_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def test_per_layer_embedding_in_browser(browser, app, tmp_path):
    from playwright.sync_api import expect

    from embeddings.formats import load_embedding

    make_images(app.data.datasets / "kset", n=2, size=64, seed=3, caption="a toy on a table")
    page = open_app(browser, app, accept_downloads=True)

    # --- Create: a per-layer object and a standard style --------------------------------------------
    fill(page, "create_name", "kobj")
    fill(page, "create_init", "cat")
    fill(page, "create_vectors", "2")
    page.locator("#create_kind").get_by_label("Per-layer (P+ / XTI)", exact=True).check()
    expect(page.locator("#create_grouping")).to_be_visible()
    page.locator("#create_btn").click()
    expect(page.locator("#create_result")).to_contain_text("Created", timeout=240_000)  # the first model load
    groups = load_embedding(app.data.embeddings / "kobj.safetensors").kind_info["groups"]
    page.locator("#create_kind").get_by_label("Standard", exact=True).check()
    fill(page, "create_name", "ksty")
    fill(page, "create_init", "painting")
    page.locator("#create_btn").click()
    expect(page.locator("#create_result")).to_contain_text("ksty", timeout=120_000)
    assert load_embedding(app.data.embeddings / "ksty.safetensors").kind == "standard"

    # --- Train 4 steps: the heat map and a preview appear -------------------------------------------
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_start")).to_be_visible(timeout=90_000)
    expect(page.locator("#train_heatmap .ti-heat")).to_have_count(0)  # nothing trained yet: no heat map
    pick(page, "train_embedding", "kobj")
    pick(page, "train_dataset", "kset")
    expect(page.locator("#train_dataset_check")).to_contain_text("2 image(s)", timeout=90_000)
    fill(page, "train_lr", "0.05")
    fill(page, "train_max_steps", str(STEPS))
    fill(page, "train_preview_every", str(STEPS))
    fill(page, "train_save_every", str(STEPS))
    page.get_by_text("Advanced", exact=True).click()
    fill(page, "train_preview_steps", "2")
    expect(page.locator("#train_lr_msg")).to_contain_text(f"stops at step {STEPS}", timeout=90_000)
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_role("button", name="Start", exact=True).click()
    heat = page.locator("#train_heatmap")
    expect(heat.locator(".ti-heat-cell").first).to_be_visible(timeout=240_000)  # while it runs, or at its end
    expect(page.locator("#train_status")).to_contain_text("finished", timeout=240_000)
    expect(heat.locator(f'.ti-heatmap[data-step="{STEPS}"]')).to_have_count(1, timeout=30_000)
    expect(heat.locator(".ti-heat-cell")).to_have_count(len(groups) * 2)  # layer groups x vectors
    expect(heat.locator(".ti-heat-row").first).to_have_attribute("title", groups[0])
    assert re.fullmatch(r"\d+(\.\d+)?(e-?\d+)?", heat.locator(".ti-heat-cell").first.inner_text().strip())
    expect(page.locator("#train_previews img").first).to_be_visible(timeout=90_000)
    page.locator("#train_heatmap").scroll_into_view_if_needed()
    shot(page, "train-per-layer")

    link = page.locator("#train_downloads tr", has_text=re.compile(r"\.safetensors")).locator("a")
    with page.expect_download() as dl:
        link.first.click()
    got = tmp_path / "dl.safetensors"
    dl.value.save_as(got)
    trained = load_embedding(got)
    assert trained.kind == "per-layer" and trained.step == STEPS and trained.kind_info["groups"] == groups

    # --- Generate: a style-mixing row --------------------------------------------------------------------
    page.get_by_role("tab", name="Generate").click()
    fill(page, "gen_prompt", "a photo of kobj")
    fill(page, "gen_steps", "2")
    page.get_by_text("Style mixing (per-layer embeddings)").click()
    fill(page, "gen_mix_inner", "kobj")
    fill(page, "gen_mix_outer", "ksty")
    fill(page, "gen_mix_splits", "0,2")
    page.locator("#gen_mix_btn").click()
    expect(page.locator("#gen_info")).to_contain_text("kobj", timeout=120_000)
    expect(page.locator("#gen_gallery img")).to_have_count(2, timeout=90_000)  # one image per split point
    shot(page, "generate-style-mix")
    page.close()
