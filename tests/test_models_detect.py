"""Family detection, bundled configs and the prediction-type rules, on key/shape sets (no weights)."""

from __future__ import annotations

import pytest

from models.base import ModelError
from models.single_file import (
    CONFIGS_DIR,
    bundled_config_dir,
    check_fits,
    choose_prediction_type,
    detect_family,
    expected_shapes,
)

# Published parameter counts of the real models (model cards / diffusers docs), not our output.
PUBLISHED_PARAMS = {
    "sd1": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
    "sd2": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840},
}


def _real_shapes(family: str, pred: str = "epsilon") -> dict[str, tuple[int, ...]]:
    return dict(expected_shapes(bundled_config_dir(family, pred).resolve(), family))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_bundled_configs_have_the_published_sizes(family):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / family
    with init_empty_weights():
        parts = {
            "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
            "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
            "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
        }
        if family == "sdxl":
            cfg = CLIPTextConfig.from_pretrained(folder / "text_encoder_2")
            parts["text_encoder_2"] = CLIPTextModelWithProjection(cfg)
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
    assert counts == PUBLISHED_PARAMS[family]
    assert not (folder / "tokenizer").exists()  # built from open_clip's vocabulary instead


def test_real_layouts_have_known_keys_and_are_detected():
    sd1, sd2, xl = _real_shapes("sd1"), _real_shapes("sd2", "v_prediction"), _real_shapes("sdxl")
    # Key counts and shapes of the real LDM checkpoints (e.g. v1-5-pruned: 686 UNet, 248 VAE tensors).
    assert sum(k.startswith("model.diffusion_model.") for k in sd1) == 686
    assert sum(k.startswith("model.diffusion_model.") for k in xl) == 1680
    assert sum(k.startswith("first_stage_model.") for k in sd1) == 248
    assert sd1["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] == (320, 768)
    assert sd2["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (320, 320)  # linear projection
    assert sd1["first_stage_model.encoder.mid.attn_1.q.weight"] == (512, 512, 1, 1)
    assert xl["conditioner.embedders.1.model.text_projection"] == (1280, 1280)
    assert xl["conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert xl["model.diffusion_model.label_emb.0.0.weight"] == (1280, 2816)
    assert sd2["cond_stage_model.model.token_embedding.weight"] == (49408, 1024)
    assert [detect_family(s) for s in (sd1, sd2, xl)] == ["sd1", "sd2", "sdxl"]


def test_real_files_fit_their_config_and_not_others():
    sd1 = _real_shapes("sd1")
    extra = {**sd1, "cond_stage_model.transformer.text_model.embeddings.position_ids": (1, 77), "model_ema.decay": ()}
    extra["first_stage_model.decoder.mid.attn_1.k.weight"] = (512, 512)  # some converters store VAE attention 2-D
    check_fits(extra, expected_shapes(bundled_config_dir("sd1").resolve(), "sd1"), "v1-5.safetensors", "sd1")
    with pytest.raises(ModelError, match=r"v1-5\.safetensors: does not fit the sd2 architecture: .*expected"):
        check_fits(sd1, {**_real_shapes("sd2"), **{k: v for k, v in sd1.items() if "cond_stage" in k}},
                   "v1-5.safetensors", "sd2")
    no_vae = {k: v for k, v in sd1.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(ModelError, match="has no VAE"):
        check_fits(no_vae, expected_shapes(bundled_config_dir("sd1").resolve(), "sd1"), "x.safetensors", "sd1")


def test_detection_refuses_other_kinds_by_name():
    sd1 = _real_shapes("sd1")
    inpaint = {**sd1, "model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3)}
    with pytest.raises(ModelError, match=r"inpaint\.ckpt: .*9 input channels"):
        detect_family(inpaint, "inpaint.ckpt")
    refiner = {k: v for k, v in _real_shapes("sdxl").items() if not k.startswith("conditioner.embedders.0.")}
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in refiner.items()}
    with pytest.raises(ModelError, match="refiner"):
        detect_family(refiner, "refiner.safetensors")
    with pytest.raises(ModelError, match="VAE only"):
        detect_family({k: v for k, v in sd1.items() if k.startswith("first_stage_model.")}, "vae.pt")
    with pytest.raises(ModelError, match="no tensors"):
        detect_family({}, "empty.safetensors")


def test_prediction_type_rules(tmp_path):
    f = tmp_path / "sd21-768-v-ema.safetensors"
    assert choose_prediction_type(f, "sd2", {}, None, None)[0] == "v_prediction"
    assert choose_prediction_type(tmp_path / "sd21-base.safetensors", "sd2", {}, None, None)[0] == "epsilon"
    assert choose_prediction_type(tmp_path / "anime21.safetensors", "sd2", {}, None, None)[0] == "v_prediction"
    assert choose_prediction_type(tmp_path / "anime.safetensors", "sd1", {}, None, None)[0] == "epsilon"
    assert choose_prediction_type(f, "sd2", {}, None, "eps") == ("epsilon", "given")
    meta = {"modelspec.prediction_type": "v"}
    assert choose_prediction_type(tmp_path / "xl.safetensors", "sdxl", meta, None, None)[0] == "v_prediction"
    (tmp_path / "sd21-768-v-ema.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert choose_prediction_type(f, "sd2", {}, None, None)[0] == "epsilon"  # a yaml without "v" means eps
    with pytest.raises(ModelError, match="choose epsilon or v_prediction"):
        choose_prediction_type(f, "sd2", {}, None, "x0")
    assert bundled_config_dir("sd2", "v_prediction").name == "sd2-v"
    assert bundled_config_dir("sd2", "epsilon").name == "sd2"
