"""Saved settings carry a schema version; older ones load through the migration steps.

`tests/fixtures/settings_v1.json` is a run's settings.json as written before settings had a
version (so: version 1). It must keep loading, and a later field rename must not break it.
"""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from embeddings.embedding import Embedding
from embeddings.formats import load_embedding, save_embedding
from jobs.registry import JobRegistry
from training.checkpoint import CheckpointError, TrainState, load_bundle, save_bundle
from training.config import SCHEMA_KEY, ConfigError, Migration, TrainConfig, renamed
from training.run_folder import RunFolder
from training.service import resume_training, start_training

pytest_plugins = ["train_fixtures"]

FIXTURE = Path(__file__).parent / "fixtures" / "settings_v1.json"
V1 = json.loads(FIXTURE.read_text(encoding="utf-8"))


@dataclass
class RenamedConfig(TrainConfig):
    """A future TrainConfig whose version 2 calls `tag_dropout` `caption_dropout` (the old field
    stays only because a dataclass subclass cannot drop one)."""

    caption_dropout: float = 0.0
    SETTINGS_VERSION: ClassVar[int] = 2
    MIGRATIONS: ClassVar[dict[int, Migration]] = {**TrainConfig.MIGRATIONS, 1: renamed("tag_dropout", "caption_dropout")}


def test_fixture_is_version_1_and_loads_unchanged():
    assert SCHEMA_KEY not in V1  # written before versions: no key means version 1
    cfg = TrainConfig.load(FIXTURE)
    assert (cfg.embedding, cfg.tag_dropout, cfg.flip_p, cfg.keep_tags) == ("mycat", 0.25, 0.5, 1)
    assert cfg.preview_prompts == ["a photo of [name]"] and cfg.snapshot_formats == ["safetensors", "pt"]
    saved = {k: v for k, v in cfg.to_dict().items() if k != SCHEMA_KEY}
    assert {k: saved[k] for k in V1} == V1
    # fields added since (with defaults, no schema bump needed) read as their defaults
    assert {k: v for k, v in saved.items() if k not in V1} == {
        k: v for k, v in TrainConfig().to_dict().items() if k not in V1 and k != SCHEMA_KEY}


def test_saved_settings_carry_the_version(tmp_path):
    cfg = TrainConfig.load(FIXTURE)
    assert cfg.to_dict()[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION
    for suffix in (".json", ".toml"):
        back = TrainConfig.load(cfg.save(tmp_path / f"run{suffix}"))
        assert back == cfg
    assert json.loads((tmp_path / "run.json").read_text())[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION
    # a settings dict handed to the run folder without the key is stamped: written now = today's
    run = RunFolder(tmp_path)
    run.write_settings(V1)
    assert json.loads(run.settings_path.read_text())[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION


def test_a_renamed_field_loads_from_a_v1_file(tmp_path):
    """Resume reads settings.json, restore reads embedding metadata: both through the migration."""
    cfg = RenamedConfig.load(FIXTURE)  # a run folder's settings.json
    assert cfg.caption_dropout == 0.25 and cfg.tag_dropout == 0.0
    assert cfg.flip_p == 0.5 and cfg.embedding == "mycat"  # the rest comes over as it was
    meta = tmp_path / "meta.json"  # embedding metadata nests the settings
    meta.write_text(json.dumps({"settings": V1, "name": "mycat"}))
    assert RenamedConfig.load(meta) == cfg
    # "restore settings": another tool's keys beside ours are dropped, ours migrate
    restored = RenamedConfig.from_saved({**V1, "learn_rate": "0.005"}, ignore_unknown=True)
    assert restored == cfg
    # saved again it is version 2 and loads without migrating; an old program refuses it by name
    path = cfg.save(tmp_path / "v2.json")
    saved = json.loads(path.read_text())
    assert saved[SCHEMA_KEY] == 2 and saved["caption_dropout"] == 0.25
    assert RenamedConfig.load(path) == cfg
    with pytest.raises(ConfigError, match=r"^v2.json: schema: these settings are version 2, newer"):
        TrainConfig.load(path)


def test_migration_steps_run_in_order_from_the_saved_version():
    @dataclass
    class Twice(TrainConfig):
        SETTINGS_VERSION: ClassVar[int] = 3
        MIGRATIONS: ClassVar[dict[int, Migration]] = {1: renamed("tag_dropout", "caption_dropout"),
                                                      2: renamed("caption_dropout", "tag_drop")}

    v1 = Twice.migrate(V1)
    assert v1[SCHEMA_KEY] == 3 and v1["tag_drop"] == 0.25
    assert "tag_dropout" not in v1 and "caption_dropout" not in v1
    # a version-2 file only takes the second step; keys no step knows pass through
    v2 = Twice.migrate({SCHEMA_KEY: 2, "caption_dropout": 0.1, "tag_dropout": 0.7, "_origin_step": 5})
    assert v2 == {SCHEMA_KEY: 3, "tag_drop": 0.1, "tag_dropout": 0.7, "_origin_step": 5}


@pytest.mark.parametrize("version", ["1", 0, True, 1.5, 99])
def test_a_bad_schema_is_an_error_naming_it(version):
    with pytest.raises(ConfigError, match=rf"^run.json: {SCHEMA_KEY}: "):
        TrainConfig.from_saved({**V1, SCHEMA_KEY: version}, source="run.json")


def test_unknown_keys_are_still_errors_unless_ignored():
    with pytest.raises(ConfigError, match="unknown setting 'learn_rate'"):
        TrainConfig.from_saved({**V1, "learn_rate": "0.005"})


def test_run_folder_reads_settings_under_todays_names(tmp_path):
    run = RunFolder(tmp_path / "old-run")
    run.path.mkdir()
    shutil.copy(FIXTURE, run.settings_path)
    settings = run.read_settings()
    assert settings[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION and settings["tag_dropout"] == 0.25
    assert run.describe()["embedding"] == "mycat"
    run.settings_path.write_text(json.dumps({**V1, SCHEMA_KEY: 99}))
    assert "problem" in run.describe()


def _bundle(settings: dict) -> TrainState:
    return TrainState(step=3, vectors={"clip_l": torch.zeros(2, 4)}, rng={"x": 1}, settings=settings)


def test_resume_bundle_settings_are_versioned(tmp_path):
    path = save_bundle(tmp_path / "resume.pt", _bundle({**V1, "_origin_step": 1}))
    assert torch.load(path, weights_only=True)["settings"][SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION
    # a bundle written before versions (no key) reads as version 1; the trainer's own key stays
    payload = torch.load(path, weights_only=True)
    del payload["settings"][SCHEMA_KEY]
    torch.save(payload, path)
    state = load_bundle(path)
    assert state.settings[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION
    assert state.settings["_origin_step"] == 1 and state.settings["tag_dropout"] == 0.25
    payload["settings"][SCHEMA_KEY] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"^resume.pt: schema: "):
        load_bundle(path)


def test_everything_a_run_saves_carries_the_version_and_an_old_run_resumes(tiny_model, data, solid_dataset,
                                                                           tiny_embedding):
    """A real run: settings.json, the embedding metadata and the bundle are stamped and load back
    through the one loader; with the stamps removed (a run from before versions) it still resumes."""
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, max_steps=2, save_every=1, run_name="old")
    registry = JobRegistry()
    try:
        job = start_training(registry, cfg, data)
        job.wait()
        assert job.state.value == "finished", job.error
        run = RunFolder(data.runs / "old")
        saved = json.loads(run.settings_path.read_text())
        meta = load_embedding(job.result["embedding"]).metadata["settings"]
        bundle = torch.load(run.bundle_path, weights_only=True)
        for settings in (saved, meta, bundle["settings"]):
            assert settings[SCHEMA_KEY] == TrainConfig.SETTINGS_VERSION
        assert TrainConfig.load(run.settings_path) == cfg
        assert TrainConfig.from_saved(meta) == cfg
        # take the versions out again, as a run written before them
        run.settings_path.write_text(json.dumps({k: v for k, v in saved.items() if k != SCHEMA_KEY}))
        del bundle["settings"][SCHEMA_KEY]
        torch.save(bundle, run.bundle_path)
        job = resume_training(registry, run.path, data, max_steps=4)
        job.wait()
        assert job.state.value == "finished", job.error
        assert load_embedding(job.result["embedding"]).step == 4 and not job.result["fresh_optimizer"]
    finally:
        registry.shutdown(timeout=30)


def test_restore_settings_reads_an_old_embedding(data):
    """The Train tab's "restore settings" goes through the same loader: an embedding whose metadata
    holds version-1 settings (and another tool's key) fills the form with them."""
    from ui.state import AppContext
    from ui.train_tab import _fields, restore_settings

    emb = Embedding(name="oldcat", vectors={"clip_l": torch.zeros(2, 32)}, step=40,
                    metadata={"settings": {**V1, "learn_rate": "0.005"}})
    save_embedding(emb, data.embeddings / "oldcat.safetensors")
    names = [n for n, _, _ in _fields()]
    values, message = restore_settings(AppContext(data=data.ensure()), names, "oldcat")
    assert "restored" in message
    form = dict(zip(names, values, strict=True))
    assert (form["embedding"], form["tag_dropout"], form["flip_p"], form["max_steps"]) == ("oldcat", 0.25, 0.5, 40)
    # settings it cannot use are refused with the reason, and the form is left as it is
    emb.metadata["settings"] = {**V1, "resolution": 100}
    save_embedding(emb, data.embeddings / "oldcat.safetensors")
    values, message = restore_settings(AppContext(data=data.ensure()), names, "oldcat")
    assert "cannot be restored" in message and "resolution" in message
