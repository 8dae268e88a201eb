"""The first run in a real browser, on the built-in `toy` model: previews visibly converge.

The README's first-run walkthrough, through the page: Preprocess writes the toy example dataset
(eight images of a blue circle, a pair the toy model never saw, captioned by background only) ->
Create a 2-vector embedding from "shape" on `toy` -> Train it with the shipped template, previews
before training and every 25 steps for four seeds -> the gallery's images, fetched as the page
shows them, are read by the toy model's attribute reader: the untrained previews show some shape in
some colour, the last ones the blue circle. The screenshot is the README's.
"""

from __future__ import annotations

import io
import re

import pytest

from tests.browser_fixtures import fill, images_loaded, open_app, pick, shot

STEPS = 100
EVERY = 25
SEEDS = (0, 1, 2, 3)

pytest_plugins = ["tests.browser_fixtures", "tests.ui_fixtures", "toy_fixtures"]
pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]


def test_toy_previews_converge_in_browser(browser, app, toy_reader):
    from PIL import Image
    from playwright.sync_api import expect

    from embeddings.formats import load_embedding
    from models.toy import world
    from models.toy.planted import INIT_TEXT, TEMPLATE

    page = open_app(browser, app, height=1600)  # the gallery (55% of the height) shows every row

    # --- Preprocess: the toy example dataset (= python -m models.toy.planted data/datasets/bluecircle) ----
    page.get_by_role("tab", name="Preprocess").click()
    page.get_by_text("Other sources", exact=True).click()
    page.locator("#pre_toy_example").click()
    expect(page.locator("#pre_status")).to_contain_text("Wrote the toy example in bluecircle", timeout=90_000)
    expect(page.locator("#pre_grid")).to_contain_text("background", timeout=90_000)  # its captions, to edit
    assert len(list((app.data.datasets / "bluecircle").glob("*.png"))) == 8
    page.get_by_role("tab", name="Create").click()

    # --- Create on toy ------------------------------------------------------------------------------
    pick(page, "create_model", "toy")
    fill(page, "create_name", "bluecircle")
    fill(page, "create_init", INIT_TEXT)
    fill(page, "create_vectors", "2")
    page.locator("#create_btn").click()
    expect(page.locator("#create_result")).to_contain_text("Created", timeout=240_000)
    created = load_embedding(app.data.embeddings / "bluecircle.safetensors")
    assert created.metadata["base_model"] == "toy" and created.vectors["clip_l"].shape[0] == 2

    # --- Train: the README's settings, previews before training and every 25 steps ----------------------
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train_start")).to_be_visible(timeout=90_000)
    pick(page, "train_model", "toy")
    pick(page, "train_embedding", "bluecircle")
    pick(page, "train_dataset", "bluecircle")
    expect(page.locator("#train_dataset_check")).to_contain_text("8 image(s)", timeout=90_000)
    pick(page, "train_template", TEMPLATE)
    fill(page, "train_lr", "0.05")
    fill(page, "train_batch_size", "4")
    fill(page, "train_max_steps", str(STEPS))
    fill(page, "train_preview_every", str(EVERY))
    fill(page, "train_save_every", str(STEPS))
    expect(page.locator("#train_resolution input")).to_have_value("64")  # toy's native size
    for elem, value in (("train_lr", "0.05"), ("train_batch_size", "4"), ("train_max_steps", str(STEPS))):
        expect(page.locator(f"#{elem} input, #{elem} textarea").first).to_have_value(value)
    page.get_by_text("Advanced", exact=True).click()
    page.locator("#train_preview_first input").check()
    fill(page, "train_preview_seeds", ", ".join(map(str, SEEDS)))
    expect(page.locator("#train_lr_msg")).to_contain_text(f"stops at step {STEPS}", timeout=90_000)
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#train_status")).to_contain_text("finished", timeout=600_000)
    rounds = STEPS // EVERY + 1  # and the one before training
    expect(page.locator("#train_previews img")).to_have_count(rounds * len(SEEDS), timeout=90_000)
    images_loaded(page, "train_previews")
    page.locator("#train_previews").scroll_into_view_if_needed()
    shot(page, "train-toy")

    # --- The attribute reader on the previews the page shows -------------------------------------------
    shape, colour = world.PLANTED
    hits: dict[int, list[bool]] = {}
    for src in page.locator("#train_previews img").evaluate_all("imgs => imgs.map(i => i.src)"):
        step = int(re.search(r"bluecircle-(\d{6})-\d+\.png", src).group(1))
        body = page.request.get(src).body()
        hits.setdefault(step, []).append(toy_reader.read(Image.open(io.BytesIO(body))).shows(shape=shape, colour=colour))
    assert sorted(hits) == list(range(0, STEPS + 1, EVERY)) and all(len(h) == len(SEEDS) for h in hits.values())
    print({step: f"{sum(h)}/{len(h)}" for step, h in hits.items()})
    assert sum(hits[0]) <= 1, f"the untrained embedding already shows a {colour} {shape}: {hits}"
    assert sum(hits[STEPS]) >= 3, f"the last previews do not show a {colour} {shape}: {hits}"
    page.close()
