"""Fixtures for tests on the built-in `toy` model: the model, its attribute reader, the planted concept."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.toy.planted import make_planted_dataset


@pytest.fixture(scope="session")
def toy_model(shared_data):
    """The built-in toy model, frozen. Do not modify it in tests."""
    from models.load import load_base_model

    return load_base_model("toy", shared_data)


@pytest.fixture(scope="session")
def toy_reader():
    from models.toy import load_reader

    return load_reader()


@pytest.fixture
def planted_dataset(tmp_path) -> Path:
    return make_planted_dataset(tmp_path / "planted")
