"""TrainConfig: one value for UI, CLI files, run folders and embedding metadata."""

import dataclasses
import json

import pytest

from training.config import ConfigError, TrainConfig


def test_round_trip_toml_and_json(tmp_path):
    cfg = TrainConfig.from_dict({"embedding": "cat", "dataset": "d", "lr": "0.05:10, 0.005", "max_steps": 40,
                                 "preview_prompts": ["a [name]"], "preview_seeds": [1, 2], "flip_p": 0.5})
    for suffix in (".toml", ".json"):
        path = cfg.save(tmp_path / f"run{suffix}")
        back = TrainConfig.load(path)
        assert back == cfg
        assert back is not cfg
    # embedding metadata nests the settings under "settings"; load reads that too
    (tmp_path / "meta.json").write_text(json.dumps({"settings": cfg.to_dict()}))
    assert TrainConfig.load(tmp_path / "meta.json") == cfg


@pytest.mark.parametrize("values,key", [
    ({"learning_rate": 0.1}, "learning_rate"),
    ({"batch_size": "2"}, "batch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": "0.01:abc"}, "lr"),
    ({"lr": "0.01:100", "lr_kind": "cosine"}, "lr"),
    ({"clip_mode": "value", "clip_value": "x"}, "clip_value"),
    ({"clip_mode": "sideways"}, "clip_mode"),
    ({"vector_shuffle": "sometimes"}, "vector_shuffle"),
    ({"flip_p": 1.5}, "flip_p"),
    ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
    ({"snapshot_formats": ["gif"]}, "snapshot_formats"),
    ({"run_name": "../escape"}, "run_name"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(values)
    assert str(info.value).startswith(f"unknown setting {key!r}") or str(info.value).startswith(f"{key}:")


def test_bad_file_names_file_and_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('embedding = "x"\nmax_step = 10\n')
    with pytest.raises(ConfigError, match=r"run.toml: unknown setting 'max_step'.*max_steps"):
        TrainConfig.load(path)
    path.write_text("embedding = \n")
    with pytest.raises(ConfigError, match="run.toml: not valid TOML"):
        TrainConfig.load(path)


def test_data_options_cover_every_dataset_field():
    from training.dataset import DataOptions

    cfg = TrainConfig(resolution=64, flip_p=0.25, keep_tags=2)
    opts = cfg.data_options()
    names = {f.name for f in dataclasses.fields(DataOptions)}
    assert names <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert (opts.resolution, opts.flip_p, opts.keep_tags) == (64, 0.25, 2)
    # same defaults, so a config that does not mention a data option trains like the dataset default
    assert {n: getattr(TrainConfig(), n) for n in names} == dataclasses.asdict(DataOptions())


def test_ints_accepted_for_floats_and_single_values_for_lists():
    cfg = TrainConfig.from_dict({"min_lr": 0, "preview_seeds": 7, "lr": 0.01})
    assert cfg.min_lr == 0.0 and isinstance(cfg.min_lr, float)
    assert cfg.preview_seeds == [7] and cfg.lr == "0.01"
