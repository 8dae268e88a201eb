"""A per-timestep and a direct embedding through the whole app in a real browser (Playwright +
Debian's Chromium), one server for both.

For each kind: create it on tiny -> train it a few steps: the live norms (and, per-timestep, the heat
map with a row per anchor timestep) and a preview appear -> download the .safetensors from the
Train tab (it loads with its kind). The dataset is written to the data folder directly (the
Preprocess tab has its own browser test), so the runs are short.
"""

import re

import pytest

from tests.browser_fixtures import fill, open_app, pick, shot
from tests.ui_fixtures import make_images

STEPS = 3
KINDS = (("kpt", "Per-timestep", "per-timestep"), ("kdir", "Direct conditioning (experimental)", "direct"))

pytest_plugins = ["tests.browser_fixtures", "tests.ui_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


def test_per_timestep_and_direct_embeddings_in_browser(browser, app, tmp_path):
    from playwright.sync_api import expect

    from embeddings.formats import load_embedding

    make_images(app.data.datasets / "tset", n=2, size=64, seed=5, caption="a toy on a table")
    page = open_app(browser, app, accept_downloads=True)

    # --- Create: one of each kind -------------------------------------------------------------------
    fill(page, "create_init", "cat")
    fill(page, "create_vectors", "2")
    for i, (name, label, kind) in enumerate(KINDS):
        fill(page, "create_name", name)
        page.locator("#create_kind").get_by_label(label, exact=True).check()
        page.locator("#create_btn").click()
        expect(page.locator("#create_result")).to_contain_text(name, timeout=240_000 if i == 0 else 120_000)
        assert load_embedding(app.data.embeddings / f"{name}.safetensors").kind == kind

    # --- Train each a few steps: live norms, the heat map (per-timestep), a preview; download ----------
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_start")).to_be_visible(timeout=90_000)
    heat = page.locator("#train_heatmap")
    for name, _label, kind in KINDS:
        pick(page, "train_embedding", name)
        pick(page, "train_dataset", "tset")
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
        expect(page.locator("#train_status")).to_contain_text(re.compile(rf"train {name} .*finished"),
                                                              timeout=240_000)
        # live norms: a line per learned vector, up to the last step (the poll's chart points)
        page.wait_for_function(
            f"() => Object.values(window.tiCharts.series().norms).some(p => p.length && p[p.length - 1][0] === {STEPS})",
            timeout=30_000)
        assert page.evaluate("() => Object.keys(window.tiCharts.series().norms).length") >= 2
        expect(page.locator(f'#train_previews img[src*="{name}-"]').first).to_be_visible(timeout=90_000)
        if kind == "per-timestep":  # rows named by anchor timestep: anchor x vector cells
            expect(heat.locator(f'.ti-heatmap[data-step="{STEPS}"]')).to_have_count(1, timeout=30_000)
            expect(heat.locator(".ti-heat-row")).to_have_count(2)
            expect(heat.locator(".ti-heat-row").first).to_have_attribute("title", "t=0")
            expect(heat.locator(".ti-heat-row").last).to_have_attribute("title", "t=999")
            expect(heat.locator(".ti-heat-cell")).to_have_count(2 * 2)
            assert re.fullmatch(r"\d+(\.\d+)?(e-?\d+)?", heat.locator(".ti-heat-cell").first.inner_text().strip())
            heat.scroll_into_view_if_needed()
            shot(page, "train-per-timestep")
        else:  # one set of vectors for every layer and timestep: norm lines only
            expect(heat.locator(".ti-heat-cell")).to_have_count(0, timeout=30_000)

        link = page.locator("#train_downloads tr", has_text=re.compile(rf"{name}.*\.safetensors")).locator("a")
        with page.expect_download() as dl:
            link.first.click()
        got = tmp_path / f"{name}.safetensors"
        dl.value.save_as(got)
        trained = load_embedding(got)
        assert trained.kind == kind and trained.step == STEPS and trained.is_finite()
    page.close()
