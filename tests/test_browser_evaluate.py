"""The Evaluate tab in a real browser (Playwright + Debian's Chromium): evaluate a finished run,
see the chart and the suggestion, promote the suggested step, open the grid. Screenshots go to
test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_scores import SCORE_SETTINGS, make_random_clip

from models.clip import clip_folder
from tests.browser_fixtures import images_loaded, open_app, shot
from tests.ui_fixtures import running_app

pytest_plugins = ["train_fixtures", "tests.browser_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]


def test_evaluate_chart_suggestion_promote_grid(browser, tiny_model, data, solid_dataset, tiny_embedding):
    from playwright.sync_api import expect
    from train_fixtures import tiny_config

    from embeddings.formats import load_embedding
    from training.trainer import train

    make_random_clip(clip_folder(data) / "random-clip")
    cfg = tiny_config(data, solid_dataset, max_steps=2, save_every=1, preview_steps=1, **SCORE_SETTINGS)
    run_dir = Path(train(cfg, tiny_model, data)["run_dir"])

    with running_app(data) as app:
        page = open_app(browser, app)
        page.get_by_role("tab", name="Evaluate").click()
        # the tab re-reads the runs and CLIPs when shown: wait for that before picking a run
        expect(page.locator("#ev_clip_note")).to_contain_text("random-clip", timeout=120_000)
        box = page.locator("#ev_run input").first
        box.click()
        page.get_by_role("option", name=run_dir.name, exact=False).first.click()
        expect(page.locator("#ev_suggestion")).to_contain_text("Evaluate run", timeout=120_000)

        page.locator("#ev_evaluate").click()
        expect(page.locator("#ev_suggestion")).to_contain_text("Suggested: step", timeout=600_000)
        expect(page.locator("#ev_status")).to_contain_text("done", timeout=120_000)
        images_loaded(page, "ev_chart")
        expect(page.locator("#ev_table")).to_contain_text("untrained")
        shot(page, "evaluate-chart")
        step = int(page.locator("#ev_promote_step input").input_value())
        assert step in (1, 2)

        page.locator("#ev_promote_name textarea, #ev_promote_name input").first.fill("flat-kept")
        page.locator("#ev_promote").click()
        expect(page.locator("#ev_promote_msg")).to_contain_text("Promoted step", timeout=120_000)
        assert load_embedding(data.embeddings / "flat-kept.safetensors").step == step

        expect(page.locator("#ev_grid_steps input, #ev_grid_steps textarea").first).to_have_value("1,2")
        seeds = page.locator("#ev_grid_seeds input, #ev_grid_seeds textarea").first
        seeds.fill("0,1")
        seeds.press("Tab")
        page.locator("#ev_grid").click()
        expect(page.locator("#ev_status")).to_contain_text("grid", timeout=120_000)
        images_loaded(page, "ev_grid_image", timeout=600_000)
        shot(page, "evaluate-grid")
        assert list((run_dir / "grids").glob("*.png"))
