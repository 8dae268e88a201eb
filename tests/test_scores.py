"""CLIP scores plumbing on the tiny model with a random-weight CLIP of the toy CLIP's size.

A random CLIP's numbers mean nothing; these tests check what does not depend on meaning: where
a CLIP is found, determinism, the cache, scores.csv and the events, evaluation during training
and afterwards, auto-stop and resume. That scores move the right way is tested on the toy world
(test_scores_toy.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs import events
from jobs.registry import Job
from jobs.view import view_of
from models.clip import ClipNotFound, clip_folder, discover_clips, find_clip, load_clip, save_clip_folder
from training.run_folder import RunFolder
from training.scores import evaluate_run, run_scores
from training.trainer import train

pytest_plugins = ["train_fixtures"]

TOY_CLIP_CONFIG = Path(__file__).resolve().parents[1] / "models" / "toy" / "toy-clip.json"

SCORE_SETTINGS = dict(score_prompts=["a photo of [name]"], edit_prompts=["a painting of [name]"],
                      score_seeds=[0], score_steps=2, preview_cfg=2.0)


def make_random_clip(folder: Path, seed: int = 0) -> Path:
    import open_clip
    import torch

    cfg = json.loads(TOY_CLIP_CONFIG.read_text())
    torch.manual_seed(seed)
    return save_clip_folder(open_clip.model.CLIP(**cfg), cfg, folder, mean=(0.5,) * 3, std=(0.5,) * 3)


@pytest.fixture
def random_clip(data) -> Path:
    return make_random_clip(clip_folder(data) / "random-clip")


def test_no_clip_says_what_to_put_where(data, tmp_path):
    with pytest.raises(ClipNotFound) as e:
        find_clip("", data, hf_cache=tmp_path / "empty-cache")
    msg = str(e.value)
    assert str(clip_folder(data)) in msg and "open_clip_config.json" in msg and "eval loss works" in msg
    with pytest.raises(ClipNotFound, match="no such CLIP"):
        find_clip("nope", data, hf_cache=tmp_path / "empty-cache")


def test_clip_found_in_data_folder_file_pair_and_hub_cache(data, tmp_path, random_clip):
    assert [c.name for c in discover_clips(data, hf_cache=tmp_path / "none") if c.kind != "toy"] == ["random-clip"]
    assert find_clip("", data, hf_cache=tmp_path / "none").path == str(random_clip)
    assert find_clip("random-clip", data).path == str(random_clip)  # a name under data/models/clip
    # a weights file with its config beside it
    pair = tmp_path / "pair"
    pair.mkdir()
    (pair / "mine.safetensors").write_bytes((random_clip / "open_clip_model.safetensors").read_bytes())
    cfg = json.loads((random_clip / "open_clip_config.json").read_text())
    (pair / "mine.json").write_text(json.dumps(cfg))
    info = find_clip(str(pair / "mine.safetensors"), data)
    assert info.kind == "file"
    a = load_clip(str(pair / "mine.safetensors"), data)
    # a hub-cache layout
    snap = tmp_path / "hub" / "models--someone--tiny-clip" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    for f in random_clip.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    assert find_clip("someone/tiny-clip", data, hf_cache=tmp_path / "hub").kind == "hub-cache"
    b = load_clip(str(random_clip), data)
    from PIL import Image

    img = [Image.new("RGB", (64, 64), (200, 30, 30))]
    assert a.encode_images(img).allclose(b.encode_images(img), atol=1e-6)  # same weights, same features


def test_scores_during_training_then_evaluate_run_is_cached_and_deterministic(
        tiny_model, data, solid_dataset, tiny_embedding, random_clip):
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, max_steps=4, save_every=2, score_every=2, **SCORE_SETTINGS)
    job = Job(id="t", kind="train", title="t")
    result = train(cfg, tiny_model, data, job)
    run = RunFolder(Path(result["run_dir"]))
    rows = run.read_scores()
    assert [(r["step"], r["untrained"]) for r in rows] == [(0, 1), (2, 0), (4, 0)]
    live = [e.payload for e in job.events_since(0)[0] if isinstance(e.payload, events.Scores)]
    assert [(s.step, bool(s.untrained)) for s in live] == [(0, True), (2, False), (4, False)]
    view = view_of(job.events_since(0)[0])
    assert [p[0] for p in view.score_series()["likeness"]] == [0, 2, 4]

    # afterwards: every snapshot (steps 2 and 4) and the untrained one, all from the cache
    ev_job = Job(id="e", kind="evaluate", title="e")
    got = evaluate_run(run, data, ev_job, model=tiny_model)
    assert [(s.step, s.untrained) for s in got.scores] == [(0, True), (2, False), (4, False)]
    fresh = {(s.step, s.untrained): s for s in got.scores}
    for r in rows:
        s = fresh[(r["step"], bool(r["untrained"]))]
        assert (s.likeness, s.editability) == pytest.approx((r["likeness"], r["editability"]), abs=1e-6)
    assert got.suggestion.step in (2, 4) and "step" in got.suggestion.words
    scored = [e.payload for e in ev_job.events_since(0)[0] if isinstance(e.payload, events.Scores)]
    assert len(scored) == 3

    # determinism: an empty cache gives the same numbers again (fixed prompts and seeds)
    for f in run.score_cache.glob("*.json"):
        f.unlink()
    again = evaluate_run(run, data, model=tiny_model)
    assert [x for s in again.scores for x in (s.likeness, s.editability)] == pytest.approx(
        [x for s in got.scores for x in (s.likeness, s.editability)], abs=1e-6)
    assert all(not s.cached and s.seconds > 0 for s in again.scores)
    cached = evaluate_run(run, data, model=tiny_model)
    assert all(s.cached for s in cached.scores)
    # the folder alone answers too (no model): the chart's and the CLI's source
    assert run_scores(run).suggestion == cached.suggestion
    # the CSV keeps whole rows, one per step and kind
    assert len(run.read_scores()) == 3
    # other score settings are another cache entry
    other = evaluate_run(run, data, model=tiny_model, overrides={"score_seeds": [5]})
    assert not any(s.cached for s in other.scores)
    assert [s.likeness for s in other.scores] != [s.likeness for s in got.scores]


def test_no_clip_training_warns_once_and_goes_on(tiny_model, data, solid_dataset, tiny_embedding, tmp_path,
                                                  monkeypatch):
    from train_fixtures import tiny_config

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub"))
    cfg = tiny_config(data, solid_dataset, max_steps=4, score_every=1, **SCORE_SETTINGS)
    job = Job(id="t", kind="train", title="t")
    result = train(cfg, tiny_model, data, job)
    assert result["stopped"] == "finished"
    warnings = [e.payload.text for e in job.events_since(0)[0] if isinstance(e.payload, events.Warning)]
    assert len([w for w in warnings if "CLIP scores are off" in w]) == 1
    assert "data/models/clip" in " ".join(warnings) or str(clip_folder(data)) in " ".join(warnings)


def test_auto_stop_says_why_and_resumes(tiny_model, data, solid_dataset, tiny_embedding):
    """A learning rate too small to move the eval loss: auto-stop after `patience` evaluations
    with a final snapshot and the reason; resuming trains on and counts afresh."""
    from train_fixtures import tiny_config

    from training.service import plan_resume

    cfg = tiny_config(data, solid_dataset, lr="1e-12", max_steps=12, eval_every=1, eval_images=1,
                      auto_stop="eval_loss", auto_stop_patience=2)
    job = Job(id="t", kind="train", title="t")
    result = train(cfg, tiny_model, data, job)
    assert result["stopped"] == "auto-stopped" and result["step"] == 3
    assert "eval loss has not improved for 2 evaluations" in result["reason"]
    run = RunFolder(Path(result["run_dir"]))
    assert any(p.name.endswith("-000003.safetensors") for p in run.snapshot_files())
    view = view_of(job.events_since(0)[0])
    assert any("auto-stopped at step 3: eval loss has not improved" in m for m in view.messages)

    plan = plan_resume(run.path, data)
    assert plan.resume
    again = train(plan.config, tiny_model, data, run=plan.run, resume=True)
    assert again["stopped"] == "auto-stopped" and again["step"] == 6  # counted afresh from step 3
