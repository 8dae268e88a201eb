"""Shared fixtures. Everything is offline: no test touches the network."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from workspace.datadir import DataDir  # noqa: E402


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory) -> DataDir:
    """A data folder shared by the whole session (the tiny model is built once here)."""
    return DataDir.at(tmp_path_factory.mktemp("shared-data")).ensure()


@pytest.fixture
def data(tmp_path, shared_data) -> DataDir:
    """A fresh data folder per test whose cache points at the shared one (tiny model reused)."""
    dd = DataDir.at(tmp_path / "data").ensure()
    (dd.cache).rmdir()
    (dd.cache).symlink_to(shared_data.cache, target_is_directory=True)
    return dd


@pytest.fixture(scope="session")
def tiny_model(shared_data):
    """The built-in tiny SD1-shaped model, frozen. Do not modify it in tests."""
    from models.load import load_base_model

    return load_base_model("tiny", shared_data)
