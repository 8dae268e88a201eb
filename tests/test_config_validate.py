"""Every rule about a training setting lives in TrainConfig.validate(), checked before anything loads.

The dataset's options are a view of some TrainConfig fields; a value they would refuse is refused
by the config first, so `resolution=100` fails when the command starts, not after the model loaded.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.config import ConfigError, TrainConfig
from training.dataset import DataError, DataOptions

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("changes,key", [
    # rules that lived only in the dataset options before
    ({"resolution": 100}, "resolution"),  # not a multiple of 8
    ({"resolution": 8}, "resolution"),  # below 16
    ({"bucket_step": 12}, "bucket_step"),
    ({"bucket_step": 0}, "bucket_step"),
    ({"filename_regex": "(unclosed"}, "filename_regex"),
    ({"repeats": 1.5}, "repeats"),  # a whole number is needed
    ({"keep_tags": "2"}, "keep_tags"),
    ({"tag_dropout": True}, "tag_dropout"),  # a bool is not a number
    ({"min_bucket": 2048}, "min_bucket"),
    ({"flip_p": -0.1}, "flip_p"),
    ({"keep_tags": -1}, "keep_tags"),
    ({"repeats": 0}, "repeats"),
    # the same type rule covers every field
    ({"preview_seeds": 3}, "preview_seeds"),
    ({"preview_seeds": [1.5]}, "preview_seeds"),
    ({"lr": 0.01}, "lr"),
])
def test_validate_names_the_key(changes, key):
    cfg = TrainConfig(**changes)
    with pytest.raises(ConfigError, match=f"^{key}: "):
        cfg.validate()
    # the dataset options borrow the same rule and say the same thing
    data_fields = {k: v for k, v in changes.items() if k in DataOptions.__dataclass_fields__}
    if data_fields:
        with pytest.raises(DataError) as info:
            DataOptions(**data_fields).validate()
        with pytest.raises(ConfigError) as same:
            cfg.validate()
        assert str(info.value) == str(same.value)


def test_moved_rules_accept_good_values():
    TrainConfig(resolution=16, bucket_step=8, filename_regex=r"(\w+)-", flip_p=1, min_bucket=32,
                max_bucket=128).validate()
    assert DataOptions(resolution=64, bucket_step=8).validate().resolution == 64


def test_from_dict_reports_moved_rules_with_the_file(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('embedding = "x"\nresolution = 100\nbucket_step = 12\n')
    with pytest.raises(ConfigError, match=r"^run.toml: resolution: must be a multiple of 8"):
        TrainConfig.load(path)


def test_cli_refuses_bad_data_settings_before_loading_a_model(tmp_path):
    """`app.py train` with a resolution the dataset cannot use stops at the config, naming the key:
    no run folder is made and no model is loaded (the named model does not even exist)."""
    data = tmp_path / "data"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "app.py"), "--data-dir", str(data), "train", "--no-bar",
           "--embedding", "nothing-here", "--dataset", str(tmp_path / "no-dataset"),
           "--model", str(tmp_path / "no-model"), "--set", "resolution=100", "--set", "bucket_step=12"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "resolution: must be a multiple of 8" in out and "100" in out
    assert "loading base model" not in out and "no-model" not in out
    assert not (data / "runs").exists() or not any((data / "runs").iterdir())
