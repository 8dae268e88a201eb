"""Grids, promote and run comparison on a real tiny run, through the core and the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageChops

from cli import main
from embeddings.formats import load_embedding
from embeddings.prompt import generate
from training.compare import compare_runs
from training.grid import grid_for_run
from training.run_folder import RunFolder
from training.trainer import train

pytest_plugins = ["train_fixtures"]


@pytest.fixture
def three_snapshot_run(tiny_model, data, solid_dataset, tiny_embedding) -> RunFolder:
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, max_steps=3, save_every=1, preview_steps=2, preview_cfg=2.0,
                      preview_prompts=["a photo of [name]"], preview_seeds=[0])
    return RunFolder(Path(train(cfg, tiny_model, data)["run_dir"]))


def test_grid_size_labels_and_same_pixels_as_single_images(tiny_model, data, three_snapshot_run):
    run = three_snapshot_run
    grid = grid_for_run(run, data, [1, 2, 3], seeds=[4, 9], model=tiny_model)
    assert grid.path is not None and grid.path.parent == run.grids and grid.path.is_file()
    assert len(grid.cells) == 2 and all(len(line) == 3 for line in grid.cells)
    w, h = grid.cells[0][0].size
    assert (w, h) == (64, 64)  # the run's resolution
    saved = Image.open(grid.path)
    assert saved.size == grid.image.size and saved.width >= 3 * w and saved.height >= 2 * h
    assert "steps [1, 2, 3]" in saved.info["parameters"] and "seeds [4, 9]" in saved.info["parameters"]
    # the labels: dark pixels above each column and left of each row, none over the cells' gaps
    sheet = saved.convert("L")
    (l0, t0, _, _), r2 = grid.boxes[0][0], grid.boxes[0][2][2]
    assert sheet.crop((l0, 0, r2, t0)).getextrema()[0] < 100  # column labels drawn
    assert sheet.crop((0, t0, l0, grid.boxes[1][0][3])).getextrema()[0] < 100  # row labels drawn
    # each cell is exactly the image the snapshot makes on its own (corners of the grid)
    for r, c, seed, step in ((0, 0, 4, 1), (1, 2, 9, 3)):
        emb = load_embedding(run.snapshots / f"flatcol-{step:06d}.safetensors")
        emb = emb.copy(name="flatcol")
        alone = generate(tiny_model, "a photo of flatcol", [emb], seed=seed, steps=2, cfg=2.0, width=64, height=64)
        cell = saved.crop(grid.boxes[r][c]).convert("RGB")
        assert ImageChops.difference(cell, alone.convert("RGB")).getbbox() is None, (r, c)
    # columns differ: the snapshots are different vectors
    assert ImageChops.difference(grid.cells[0][0], grid.cells[0][2]).getbbox() is not None


def test_grid_by_prompt_and_cli(tiny_model, data, three_snapshot_run, capsys):
    run = three_snapshot_run
    code = main(["grid", run.name, "--steps", "1,3", "--prompt", "[name]", "--prompt", "a painting of [name]",
                 "--seeds", "2", "--sample-steps", "1", "--data-dir", str(data.root)])
    out = capsys.readouterr().out
    assert code == 0 and "2 step(s) x 2 prompt(s)" in out
    assert main(["grid", run.name, "--steps", "7", "--data-dir", str(data.root)]) == 2
    assert "no snapshot at step 7 (snapshots at: 1, 2, 3)" in capsys.readouterr().err


def test_promote_and_compare(data, three_snapshot_run, capsys):
    run = three_snapshot_run
    # a fake score row for step 2, so the metadata has something to carry
    run.write_scores([{"step": 0, "likeness": 0.1, "editability": 0.3, "untrained": 1},
                      {"step": 2, "likeness": 0.6, "editability": 0.29, "untrained": 0}])
    code = main(["promote", str(run.path), "--name", "flat-best", "--data-dir", str(data.root)])
    out = capsys.readouterr().out
    assert code == 0 and "promoted step 2" in out  # no --step: the suggested one
    emb = load_embedding(data.embeddings / "flat-best.safetensors")
    assert emb.name == "flat-best" and emb.step == 2
    src = emb.metadata["promoted_from"]
    assert src["step"] == 2 and src["run"] == run.name and src["scores"]["likeness"] == pytest.approx(0.6)
    assert "suggested" in src["scores"]
    assert emb.vectors["clip_l"].equal(load_embedding(run.snapshots / "flatcol-000002.safetensors").vectors["clip_l"])
    # the library refuses a second file of that name
    assert main(["promote", str(run.path), "--step", "3", "--name", "flat-best", "--data-dir", str(data.root)]) == 2

    # compare with a copy whose settings differ
    other = RunFolder(run.path.parent / "other-run")
    shutil.copytree(run.path, other.path)
    settings = json.loads(other.settings_path.read_text())
    settings.update(lr="0.5", seed=11)
    other.settings_path.write_text(json.dumps(settings))
    cmp = compare_runs([run, other])
    assert [k for k, _ in cmp.differing] == ["lr", "seed"]
    assert cmp.table()[0] == ["lr", "0.02", "0.5"]
    assert [p[0] for p in cmp.runs[0].series["loss"]] == [1, 2, 3]
    assert cmp.runs[1].series["likeness"] == [(2, pytest.approx(0.6))]
    chart = data.root / "cmp.png"
    assert main(["compare", run.name, "other-run", "--chart", str(chart), "--data-dir", str(data.root)]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.02 | 0.5" in out and Image.open(chart).size[0] > 0
