"""Model discovery, the hub-offline message, the `models` CLI and the built-in tiny SDXL model."""
# ruff: noqa: F811  (pytest fixtures imported from tests.models_fixtures are redefined as arguments)

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest
import torch

from models.base import ModelError
from models.discovery import discover_models
from models.load import load_base_model
from models.single_file import CONFIGS_DIR
from tests.models_fixtures import checkpoints, tiny_sdxl  # noqa: F401  (pytest fixtures)


@pytest.fixture
def models_folder(data, checkpoints, tmp_path):
    """data/models with a checkpoint, a diffusers folder, and junk around them; plus a HF cache."""
    models = data.models
    (models / "sdxl").mkdir()
    shutil.copy(checkpoints["sdxl"], models / "sdxl" / "my-xl.safetensors")
    shutil.copy(checkpoints["sd1-ckpt"], models / "old.ckpt")
    shutil.copytree(CONFIGS_DIR / "sd2", models / "my-sd2")  # JSON only: discovery never reads weights
    (models / "my-sd2" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 1000)
    (models / "README.txt").write_text("my models")
    (models / "cat.png").write_bytes(b"\x89PNG\r\n")
    (models / "broken.safetensors").write_bytes(b"\x00" * 50)
    (models / ".partial.safetensors").write_bytes(b"")
    from safetensors.torch import save_file

    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, models / "style-lora.safetensors")
    hf = tmp_path / "hf-cache"
    snap = hf / "models--someone--xl-model" / "snapshots" / "abc123"
    shutil.copytree(CONFIGS_DIR / "sdxl", snap)
    (hf / "models--someone--xl-model" / "refs").mkdir()
    (hf / "models--someone--xl-model" / "refs" / "main").write_text("abc123")
    (hf / "models--someone--a-lora" / "snapshots" / "def").mkdir(parents=True)  # not a diffusers model
    return hf


def test_discovery_lists_builtins_folder_models_and_hub_cache(data, models_folder):
    skipped = []
    found = discover_models(data, hf_cache=models_folder, skipped=skipped)
    by_name = {m.name: m for m in found}
    assert [m.name for m in found] == ["tiny", "tiny-sdxl", "tiny-sd2v", "toy", "my-sd2", "old.ckpt", "sdxl/my-xl.safetensors",
                                       "someone/xl-model"]
    assert by_name["tiny"].kind == "builtin" and "random weights" in by_name["tiny"].note
    assert by_name["tiny-sdxl"].family == "sdxl"
    assert (by_name["sdxl/my-xl.safetensors"].kind, by_name["sdxl/my-xl.safetensors"].family) == ("single-file", "sdxl")
    assert by_name["old.ckpt"].family is None and by_name["old.ckpt"].size == (data.models / "old.ckpt").stat().st_size
    assert (by_name["my-sd2"].kind, by_name["my-sd2"].family) == ("diffusers", "sd2")
    assert by_name["my-sd2"].size >= 1000
    hub = by_name["someone/xl-model"]
    assert (hub.kind, hub.family, hub.spec) == ("hub-cache", "sdxl", "someone/xl-model")
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in skipped}
    assert set(reasons) == {"broken.safetensors", "style-lora.safetensors"}
    assert "LoRA" in reasons["style-lora.safetensors"]
    # every spec loads with load_base_model (the single file here; the others are covered elsewhere)
    assert load_base_model(by_name["sdxl/my-xl.safetensors"].spec, data).family == "sdxl"


def test_discovery_on_an_empty_data_folder(data, tmp_path):
    assert [m.name for m in discover_models(data, hf_cache=tmp_path / "nothing")] == ["tiny", "tiny-sdxl", "tiny-sd2v", "toy"]


def test_hub_id_offline_gives_one_sentence_without_network(data, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("network touched")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ModelError) as err:
        load_base_model("made-up-user/made-up-model", data)
    msg = str(err.value)
    assert "\n" not in msg and msg.count(". ") == 0
    assert "made-up-user/made-up-model" in msg and "HF_HUB_OFFLINE=0 python app.py models --download" in msg


def test_cli_models_json(data, models_folder, monkeypatch, capsys):
    from cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(models_folder))
    assert main(["--data-dir", str(data.root), "models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {m["name"]: (m["kind"], m["family"]) for m in listed} == {
        "tiny": ("builtin", "sd1"),
        "tiny-sdxl": ("builtin", "sdxl"),
        "tiny-sd2v": ("builtin", "sd2"),
        "toy": ("builtin", "sd1"),
        "my-sd2": ("diffusers", "sd2"),
        "old.ckpt": ("single-file", None),
        "sdxl/my-xl.safetensors": ("single-file", "sdxl"),
        "someone/xl-model": ("hub-cache", "sdxl"),
    }
    assert main(["--data-dir", str(data.root), "models", "--info", "made/up", "--json"]) == 2
    assert "downloads are off" in capsys.readouterr().err
    assert main(["--data-dir", str(data.root), "models", "--download", "made/up"]) == 2
    assert "HF_HUB_OFFLINE=0" in capsys.readouterr().err


def test_cli_info_and_export(data, capsys, tmp_path):
    from cli import main

    out = tmp_path / "exported.safetensors"
    assert main(["--data-dir", str(data.root), "models", "--export", "tiny", str(out)]) == 0
    assert main(["--data-dir", str(data.root), "models", "--info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after the "wrote ..." line
    assert (info["family"], info["source"], info["widths"]) == ("sd1", "single-file", {"clip_l": 32})
    assert main(["--data-dir", str(data.root), "models", "--export", "tiny", str(out)]) == 2  # no overwrite


def test_tiny_sdxl_loads_and_generates(tiny_sdxl):
    from embeddings.create import create_embedding
    from embeddings.prompt import generate

    m = tiny_sdxl
    assert (m.family, m.encoder_keys, m.widths) == ("sdxl", ("clip_l", "clip_g"), {"clip_l": 32, "clip_g": 64})
    assert m.random_weights and "random weights" in m.label
    assert m.unet.config.addition_embed_type == "text_time"
    assert [t.pad_token_id for t in m.tokenizers] == [49407, 0]
    pipe = m.pipeline()
    pipe.set_progress_bar_config(disable=True)
    img = pipe(prompt="a cat", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()
    emb = create_embedding(m, "mycat", "cat", 2)
    assert {k: tuple(v.shape) for k, v in emb.vectors.items()} == {"clip_l": (2, 32), "clip_g": (2, 64)}
    with_emb = np.asarray(generate(m, "a photo of mycat", [emb], steps=2, seed=1))
    again = np.asarray(generate(m, "a photo of mycat", [emb], steps=2, seed=1))
    emb.vectors = {k: v + 1.0 for k, v in emb.vectors.items()}
    changed = np.asarray(generate(m, "a photo of mycat", [emb], steps=2, seed=1))
    assert with_emb.shape == (64, 64, 3)
    assert np.array_equal(with_emb, again)
    assert not np.array_equal(with_emb, changed)  # the embedding's vectors reach the UNet
