"""The Evaluate tab's logic with a real job registry, and the page built with real Gradio: evaluate a
finished run on the worker, see its chart, table and suggestion, promote it, make a grid, compare runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_scores import SCORE_SETTINGS, make_random_clip

from models.clip import clip_folder
from training.run_folder import RunFolder
from training.trainer import train
from ui import evaluate_tab as tab
from ui.state import AppContext

pytest_plugins = ["train_fixtures"]


def wait(ctx, job_id):
    ctx.registry.get(job_id).wait(600)
    return tab.job_status(ctx, job_id)


def test_evaluate_chart_suggestion_promote_grid_compare(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    make_random_clip(clip_folder(data) / "random-clip")
    cfg = tiny_config(data, solid_dataset, max_steps=2, save_every=1, preview_steps=1, **SCORE_SETTINGS)
    run = RunFolder(Path(train(cfg, tiny_model, data)["run_dir"]))
    ctx = AppContext(data=data)
    assert [v for _, v in tab.run_choices(ctx)] == [str(run.path)]
    assert "random-clip" in tab.clip_note(ctx, str(run.path), "")
    before = tab.show_run(str(run.path))
    assert before.table == [] and "Evaluate run" in before.suggestion and before.steps == "1,2"

    job_id = tab.start_evaluation(ctx, str(run.path), "", 0.9)
    text, running, result = wait(ctx, job_id)
    assert not running and "done" in text and result["suggested_step"] in (1, 2)
    view = tab.show_run(str(run.path))
    assert [row[0] for row in view.table] == ["0 (untrained)", 1, 2]
    assert view.chart is not None and view.chart.size[0] > 100
    assert view.suggestion.startswith("**Suggested:** step") and view.step == result["suggested_step"]

    msg = tab.promote_step(ctx, str(run.path), view.step, "flat-kept")
    assert "flat-kept" in msg and (data.embeddings / "flat-kept.safetensors").is_file()
    with pytest.raises(Exception, match="no snapshot at step 9"):
        tab.promote_step(ctx, str(run.path), 9, "other")

    grid_id = tab.start_grid(ctx, str(run.path), "1,2", "0", "")
    text, running, result = wait(ctx, grid_id)
    assert Path(result["grid"]).is_file() and Path(result["grid"]).parent == run.grids

    other = run.path.parent / "copy-run"
    shutil.copytree(run.path, other)
    settings = json.loads((other / "settings.json").read_text())
    settings["lr"] = "0.3"
    (other / "settings.json").write_text(json.dumps(settings))
    chart, rows, headers = tab.compare(ctx, [str(run.path), str(other)])
    assert rows == [["lr", "0.02", "0.3"]] and headers == ["setting", run.name, "copy-run"] and chart.size[1] > 0


def test_page_builds_with_the_evaluate_tab(data):
    from ui.app import build

    demo = build(data, ctx=AppContext(data=data))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"ev_run", "ev_evaluate", "ev_chart", "ev_promote", "ev_grid", "ev_compare"} <= ids
