"""Single-file checkpoints: round trips through our LDM mapping and diffusers' loader, and bad files."""
# ruff: noqa: F811  (pytest fixtures imported from tests.models_fixtures are redefined as arguments)

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest
import torch

from models.base import ModelError
from models.load import load_base_model
from models.single_file import load_single_file, read_safetensors_header
from tests.models_fixtures import (  # noqa: F401  (pytest fixtures)
    assert_same_model_weights,
    checkpoints,
    tiny_sdxl,
)


def _image(model, seed: int = 3) -> np.ndarray:
    pipe = model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt="a photo of a cat", num_inference_steps=2, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed), output_type="np",
    ).images[0]


@pytest.mark.parametrize("which", ["sd1", "sd1-ckpt"])
def test_sd1_round_trip_is_bit_identical_and_generates_the_same_image(which, checkpoints, tiny_model, data):
    loaded = load_base_model(str(checkpoints[which]), data)
    assert loaded.source == "single-file" and loaded.family == "sd1"
    assert loaded.encoder_keys == ("clip_l",)
    assert loaded.random_weights  # carried over from the built-in
    assert len(loaded.short_hash) == 10 and loaded.short_hash != tiny_model.short_hash
    assert loaded.tokenizers[0]("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert type(loaded.scheduler) is type(tiny_model.scheduler)
    assert_same_model_weights(tiny_model, loaded)
    assert np.array_equal(_image(tiny_model), _image(loaded))


def test_sdxl_round_trip_is_bit_identical(checkpoints, tiny_sdxl, data):
    loaded = load_single_file(checkpoints["sdxl"], data)
    assert loaded.family == "sdxl" and loaded.encoder_keys == ("clip_l", "clip_g")
    assert [t.pad_token for t in loaded.tokenizers] == ["<|endoftext|>", "!"]
    assert type(loaded.text_encoders[1]).__name__ == "CLIPTextModelWithProjection"
    assert_same_model_weights(tiny_sdxl, loaded)
    assert np.array_equal(_image(tiny_sdxl), _image(loaded))


def test_sd2_openclip_layout_round_trip(checkpoints, tiny_model, data):
    shapes, _ = read_safetensors_header(checkpoints["sd2"])
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in shapes  # fused q/k/v
    loaded = load_single_file(checkpoints["sd2"], data)
    assert loaded.family == "sd2" and loaded.encoder_keys == ("clip_h",)
    assert loaded.tokenizers[0].pad_token == "!"
    assert_same_model_weights(tiny_model, loaded)


def test_file_without_stored_config_needs_a_config_folder(checkpoints, tiny_model, data):
    bare = checkpoints["sd1-bare"]
    with pytest.raises(ModelError) as err:
        load_single_file(bare, data)
    msg = str(err.value)
    assert bare.name in msg and "standard sd1" in msg
    assert "model.diffusion_model.input_blocks.0.0.weight is [32, 4, 3, 3], expected [320, 4, 3, 3]" in msg
    loaded = load_single_file(bare, data, config_dir=tiny_model.location)  # the tiny folder describes it
    assert loaded.extra["config"] == "given config folder tiny"
    assert_same_model_weights(tiny_model, loaded)


def test_prediction_type_override_and_sidecar_yaml(checkpoints, data, tmp_path):
    src = checkpoints["sd1"]
    assert load_single_file(src, data, prediction_type="v_prediction").scheduler.config.prediction_type == "v_prediction"
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(src.read_bytes())
    (tmp_path / "model.yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    loaded = load_single_file(copy, data)
    assert loaded.prediction_type == "v_prediction" == loaded.scheduler.config.prediction_type
    assert "model.yaml" in loaded.extra["prediction_type_reason"]


# ---- bad files -------------------------------------------------------------------------------


def test_not_a_checkpoint(tmp_path, data):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(300))
    with pytest.raises(ModelError, match=r"junk\.safetensors: not a safetensors file"):
        load_base_model(str(junk), data)
    text = tmp_path / "notes.ckpt"
    text.write_text("hello, this is not a model")
    with pytest.raises(ModelError, match=r"notes\.ckpt: not a checkpoint"):
        load_base_model(str(text), data)
    png = tmp_path / "cat.png"
    png.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ModelError, match="not a checkpoint"):
        load_base_model(str(png), data)


def test_truncated_files(checkpoints, tmp_path, data):
    blob = checkpoints["sd1"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelError, match=r"cut\.safetensors: truncated"):
        load_single_file(cut, data)
    ckpt = checkpoints["sd1-ckpt"].read_bytes()
    cut2 = tmp_path / "cut.ckpt"
    cut2.write_bytes(ckpt[: len(ckpt) // 2])
    with pytest.raises(ModelError, match=r"cut\.ckpt: truncated or damaged"):
        load_single_file(cut2, data)


class _RunsCode:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path, data):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "payload": _RunsCode(str(marker))}, evil)
    assert zipfile.is_zipfile(evil)
    with pytest.raises(ModelError, match=r"evil\.ckpt: refused: .*could run code"):
        load_single_file(evil, data)
    assert not marker.exists()


def test_other_weight_files_say_what_they_are(tmp_path, data):
    from safetensors.torch import save_file

    lora = tmp_path / "style.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}, lora)
    with pytest.raises(ModelError, match=r"style\.safetensors: not a Stable Diffusion checkpoint: .*LoRA"):
        load_single_file(lora, data)
    emb = tmp_path / "emb.safetensors"
    save_file({"emb_params": torch.zeros(2, 768)}, emb)
    with pytest.raises(ModelError, match="embedding"):
        load_single_file(emb, data)
    half = tmp_path / "unet-only.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3)}, half)
    with pytest.raises(ModelError, match="unknown layout"):
        load_single_file(half, data)
