"""Fixtures for the model tests: the tiny SDXL model and single-file checkpoints made from tiny models.

Import the fixtures you use into a test module (`from tests.models_fixtures import tiny_sdxl`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from models.base import BaseModel


@pytest.fixture(scope="session")
def tiny_sdxl(shared_data) -> BaseModel:
    """The built-in tiny SDXL model, frozen. Do not modify it in tests."""
    from models.load import load_base_model

    return load_base_model("tiny-sdxl", shared_data)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tiny_model, tiny_sdxl) -> dict[str, Path]:
    """Single files written by our own diffusers->LDM mapping: sd1 (.safetensors/.ckpt, with and
    without stored configs), sdxl and an SD 2.x-layout variant of the tiny model."""
    from models.ldm_convert import save_single_file

    folder = tmp_path_factory.mktemp("checkpoints")
    files = {
        "sd1": save_single_file(tiny_model, folder / "tiny-sd1.safetensors"),
        "sd1-ckpt": save_single_file(tiny_model, folder / "tiny-sd1.ckpt"),
        "sd1-bare": save_single_file(tiny_model, folder / "tiny-bare.safetensors", embed_config=False),
        "sdxl": save_single_file(tiny_sdxl, folder / "tiny-sdxl.safetensors"),
        "sd2": save_single_file(as_family(tiny_model, "sd2"), folder / "tiny-sd2.safetensors"),
    }
    return files


def as_family(model: BaseModel, family: str) -> BaseModel:
    """The same modules labelled as another single-encoder family (sd2 = OpenCLIP key layout)."""
    keys = {"sd1": ("clip_l",), "sd2": ("clip_h",)}[family]
    return dataclasses.replace(model, family=family, encoder_keys=keys)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb), sorted(set(sa) ^ set(sb))[:5]
    different = [k for k in sa if sa[k].dtype != sb[k].dtype or not torch.equal(sa[k], sb[k])]
    assert not different, different[:5]


def assert_same_model_weights(a: BaseModel, b: BaseModel) -> None:
    assert len(a.text_encoders) == len(b.text_encoders)
    for x, y in [(a.unet, b.unet), (a.vae, b.vae), *zip(a.text_encoders, b.text_encoders, strict=True)]:
        assert_same_weights(x, y)
