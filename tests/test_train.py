"""The training loop on the tiny model: it learns, reports, guards its health, and writes its run folder."""

import csv
import json

import pytest
import torch
from PIL import Image

from embeddings.formats import load_embedding
from jobs.registry import Job
from training.run_folder import RunFolder
from training.trainer import TrainingError, train

pytest_plugins = ["train_fixtures"]


def _job() -> Job:
    return Job(id="t", kind="train", title="t")


def test_learns_eval_loss_drops_and_vector_moves(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    before = load_embedding(tiny_embedding)
    cfg = tiny_config(data, solid_dataset, lr="0.05", lr_kind="constant", max_steps=24, batch_size=2, eval_every=8)
    job = _job()
    result = train(cfg, tiny_model, data, job)
    evals = [e.data["loss"] for e in job.events("eval")]
    assert [e.data["step"] for e in job.events("eval")] == [0, 8, 16, 24]
    # deterministic evaluation: fixed images, noise and timesteps, so any drop is real
    assert evals[-1] < evals[0] - 0.003, evals
    assert all(b <= a + 1e-4 for a, b in zip(evals, evals[1:], strict=False)), evals
    after = load_embedding(result["embedding"])
    assert after.step == 24 and result["steps_done"] == 24
    moved = (after.vectors["clip_l"] - before.vectors["clip_l"]).norm() / before.vectors["clip_l"].norm()
    assert moved > 0.05
    # the model stayed frozen and untouched by training
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())
    assert all(p.grad is None for p in tiny_model.text_encoders[0].parameters())


def test_run_folder_events_and_files(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, max_steps=4, save_every=2, preview_every=4, preview_steps=2,
                      preview_seeds=[5], snapshot_formats=["safetensors", "pt"], save_png_embeddings=True,
                      run_name="myrun", tensorboard=True)
    job = _job()
    result = train(cfg, tiny_model, data, job)
    run = RunFolder(data.runs / "myrun")
    assert result["run_dir"] == str(run.path)
    assert json.loads(run.settings_path.read_text())["max_steps"] == 4
    rows = list(csv.DictReader(run.loss_csv.open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert {"step", "epoch", "loss", "lr", "norm_clip_l_0", "norm_clip_l_1"} <= set(rows[0])
    norms = job.events("norms")[-1].data["norms"]["clip_l"]
    final = load_embedding(result["embedding"])
    assert norms == pytest.approx(final.norms()["clip_l"], rel=1e-5)
    assert float(rows[-1]["norm_clip_l_1"]) == pytest.approx(norms[1], rel=1e-5)
    # snapshots every 2 steps, named by their true step, loadable, with settings in metadata
    snaps = sorted(p.name for p in run.snapshots.iterdir())
    assert "flatcol-000002.safetensors" in snaps and "flatcol-000002.pt" in snaps
    s2 = load_embedding(run.snapshots / "flatcol-000002.safetensors")
    assert s2.step == 2 and s2.name == "flatcol-000002"
    assert s2.metadata["settings"]["max_steps"] == 4
    # preview with its generation parameters as PNG text
    previews = job.events("preview")
    assert len(previews) == 1 and previews[0].data["seed"] == 5
    img = Image.open(previews[0].data["path"])
    assert "Seed: 5" in img.text["parameters"] and "flatcol" in img.text["parameters"]
    png = run.image_embeddings / "flatcol-000004.png"
    assert load_embedding(png).equal(final)
    assert list(run.tensorboard.glob("events.out.tfevents.*"))
    # final files in each format + the library copy, and the original kept
    assert set(result["files"]) == {"safetensors", "pt"}
    for path in result["files"].values():
        assert load_embedding(path).equal(final)
    assert (run.original / "flatcol.safetensors").is_file()
    assert load_embedding(run.original / "flatcol.safetensors").step == 0
    # progress and loss events carry what the UI plots
    prog = [e.data for e in job.events("progress") if e.data.get("phase") in (None, "training")][-1]
    assert prog["done"] == prog["total"] == 4 and prog["it_s"] > 0
    loss = job.events("loss")[0].data
    assert set(loss) >= {"step", "loss", "lr", "smoothed"}
    json.dumps([e.data for e in job.events()])  # JSON-able


def test_preview_first_shows_the_untrained_embedding_and_changes_nothing_else(tiny_model, data, solid_dataset):
    """`preview_first`: previews at step 0 of a fresh run (of the embedding as created), no PNG
    embedding for them, the trained vectors bit-equal to a run without it, none again on resume."""
    from train_fixtures import make_embedding, tiny_config

    noisy = dict(flip_p=0.5, latent_sampling="random", lr="0.02", batch_size=2, preview_every=2, preview_steps=2,
                 preview_seeds=[3, 4], save_every=2, save_png_embeddings=True)
    runs = {}
    for first in (False, True):
        make_embedding(tiny_model, data)  # the same fresh embedding each time
        job = _job()
        name = f"first-{first}"
        result = train(tiny_config(data, solid_dataset, max_steps=2, run_name=name, preview_first=first, **noisy),
                       tiny_model, data, job)
        runs[first] = (job, result, RunFolder(data.runs / name))
    plain, with_first = runs[False], runs[True]
    assert [e.data["step"] for e in plain[0].events("preview")] == [2, 2]
    assert [(e.data["step"], e.data["seed"]) for e in with_first[0].events("preview")] == [(0, 3), (0, 4), (2, 3), (2, 4)]
    assert sorted(p.name for p in with_first[2].previews.iterdir())[:2] == ["flatcol-000000-0.png", "flatcol-000000-1.png"]
    assert sorted(p.name for p in with_first[2].image_embeddings.iterdir()) == ["flatcol-000002.png"]  # none at 0
    a, b = (load_embedding(r[1]["files"]["safetensors"]).vectors["clip_l"] for r in (plain, with_first))
    assert torch.equal(a, b)  # previews draw on their own generators: training is untouched
    job = _job()
    train(tiny_config(data, solid_dataset, max_steps=4, run_name="first-True", preview_first=True, **noisy),
          tiny_model, data, job, run=with_first[2], resume=True)
    assert [e.data["step"] for e in job.events("preview")] == [4, 4]


def test_zero_steps_says_why(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    first = train(tiny_config(data, solid_dataset, max_steps=2), tiny_model, data, _job())
    assert first["step"] == 2
    job = _job()
    again = train(tiny_config(data, solid_dataset, max_steps=2), tiny_model, data, job)
    assert again["steps_done"] == 0 and again["stopped"] == "nothing to do"
    assert "already at step 2" in again["reason"]
    job = _job()
    ended = train(tiny_config(data, solid_dataset, max_steps=10, lr="0.01:2"), tiny_model, data, job)
    assert ended["steps_done"] == 0 and "schedule" in ended["reason"]
    more = train(tiny_config(data, solid_dataset, more_steps=1), tiny_model, data, _job())
    assert more["step"] == 3 and more["steps_done"] == 1


def test_non_finite_steps_are_skipped_then_stop(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, lr="1e30", max_steps=5, nan_patience=2, run_name="nan")
    job = _job()
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        train(cfg, tiny_model, data, job)
    warnings = [e.data["text"] for e in job.events("warning")]
    assert len(warnings) == 2 and all("non-finite" in w for w in warnings)
    # the first step (finite, huge) is the last good one: saved at its step, nothing on disk holds a NaN
    good_steps = [e.data["step"] for e in job.events("loss")]
    snaps = list((data.runs / "nan" / "snapshots").glob("*.safetensors"))
    assert snaps
    for p in snaps:
        emb = load_embedding(p)
        assert emb.is_finite() and emb.step == good_steps[-1]


def test_refuses_dataset_without_name_in_prompts(tiny_model, data, solid_dataset, tiny_embedding, tmp_path):
    from train_fixtures import tiny_config

    template = tmp_path / "noname.txt"
    template.write_text("a photo of [filewords]\n")
    with pytest.raises(Exception, match=r"\[name\]|name"):
        train(tiny_config(data, solid_dataset, template=str(template)), tiny_model, data, _job())


def test_vector_shuffle_alpha_flip_and_accumulation_run(tiny_model, data, tmp_path, tiny_embedding):
    from train_fixtures import tiny_config

    folder = tmp_path / "alpha"
    folder.mkdir()
    for i in range(2):
        img = Image.new("RGBA", (64, 48), (200, 20 * i, 40, 255))
        img.putpixel((3, 3), (0, 0, 0, 0))
        img.save(folder / f"{i}.png")
    cfg = tiny_config(data, folder, max_steps=3, vector_shuffle="all", flip_p=0.5, alpha_weight=True,
                      grad_accum=2, latent_sampling="random", bucketing=True, clip_mode="norm", clip_value="0.01")
    job = _job()
    out = train(cfg, tiny_model, data, job)
    assert out["step"] == 3
    # norm clipping at 0.01 with lr 0.02 bounds each Adam step: the vectors move, but not far
    loss = [e.data["loss"] for e in job.events("loss")]
    assert all(torch.isfinite(torch.tensor(x)) for x in loss)


def test_sdxl_trains_both_encoders_with_time_ids(data, tmp_path):
    """tiny-sdxl: two encoders (clip_l + clip_g), pooled text embeds and add_time_ids in the UNet."""
    from train_fixtures import make_dataset, tiny_config

    from embeddings.create import create_embedding
    from embeddings.formats import save_embedding
    from models.load import load_base_model

    model = load_base_model("tiny-sdxl", data)
    assert model.family == "sdxl"
    emb = create_embedding(model, "flatcol", "colour", 2)
    save_embedding(emb, data.embeddings / "flatcol.safetensors")
    cfg = tiny_config(data, make_dataset(tmp_path / "xl", n=2), model="tiny-sdxl", max_steps=2, eval_every=2)
    job = _job()
    out = train(cfg, model, data, job)
    final = load_embedding(out["embedding"])
    assert set(final.vectors) == {"clip_l", "clip_g"} and final.step == 2
    for key in ("clip_l", "clip_g"):  # gradient reached both encoders' vectors
        assert not torch.equal(final.vectors[key], emb.vectors[key])
    assert set(job.events("norms")[-1].data["norms"]) == {"clip_l", "clip_g"}
