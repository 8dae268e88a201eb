"""Fixtures for the training tests: a few solid-colour images and a fresh tiny embedding.

Solid colours make learning measurable on the random-weight tiny model: the images differ
only in a few numbers, so a handful of steps at a high learning rate moves the evaluation loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from training.config import TrainConfig

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]


def make_dataset(folder: Path, n: int = 4, size: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), COLOURS[i % len(COLOURS)]).save(folder / f"{i:02d}-solid colour.png")
        (folder / f"{i:02d}-solid colour.txt").write_text(f"a flat colour, sample {i}")
    return folder


def make_embedding(model, data, name: str = "flatcol", vectors: int = 2) -> Path:
    from embeddings.create import create_embedding
    from embeddings.formats import save_embedding

    emb = create_embedding(model, name, "colour", vectors)
    return save_embedding(emb, data.embeddings / f"{name}.safetensors")


def tiny_config(data, dataset: Path, **overrides) -> TrainConfig:
    base = dict(
        embedding="flatcol", dataset=str(dataset), model="tiny", resolution=64, bucket_step=8, min_bucket=32,
        max_bucket=128, lr="0.02", max_steps=6, save_every=0, preview_every=0, not_learning_steps=0,
        template="subject", seed=3,
    )
    base.update(overrides)
    return TrainConfig.from_dict(base)


@pytest.fixture
def solid_dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "solid")


@pytest.fixture
def tiny_embedding(tiny_model, data) -> Path:
    return make_embedding(tiny_model, data)
