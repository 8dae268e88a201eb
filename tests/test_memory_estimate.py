"""The pre-flight GPU memory estimate (training/memory.py): its shape, its suggestions, its facts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from embeddings.families import BUILTIN_MODELS
from training.config import TrainConfig
from training.memory import (
    CALIBRATION,
    GIB,
    SHAPES,
    MemorySettings,
    calibration_factor,
    estimate_memory,
    fit_options,
    model_shape,
    preflight_text,
    settings_for,
)

REAL = ("sd1", "sd2", "sdxl")


def _peak(**kw) -> int:
    return estimate_memory(MemorySettings(**kw)).peak


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_grows_with_resolution_and_batch(shape, ckpt, precision):
    step = lambda **kw: estimate_memory(MemorySettings(shape=shape, precision=precision,  # noqa: E731
                                                       gradient_checkpointing=ckpt, **kw)).phases["training step"]
    by_res = [step(resolution=r) for r in (256, 384, 512, 768, 1024)]
    assert by_res == sorted(by_res) and len(set(by_res)) == len(by_res)
    by_batch = [step(resolution=512, batch_size=b) for b in (1, 2, 4, 8)]
    assert by_batch == sorted(by_batch) and len(set(by_batch)) == len(by_batch)
    peaks = [_peak(shape=shape, resolution=r, precision=precision, gradient_checkpointing=ckpt, preview_size=r)
             for r in (256, 512, 1024)]
    assert peaks == sorted(peaks)


@pytest.mark.parametrize("shape", REAL)
def test_checkpointing_and_half_precision_lower_it(shape):
    native = SHAPES[shape].native
    base = MemorySettings(shape=shape, resolution=native, batch_size=2, precision="fp16")
    off = estimate_memory(base)
    on = estimate_memory(replace(base, gradient_checkpointing=True))
    assert on.phases["training step"] < 0.8 * off.phases["training step"]
    assert on.activations < off.activations / 3  # what checkpointing is for
    assert on.weights == off.weights
    fp32 = estimate_memory(replace(base, precision="fp32"))
    assert fp32.weights == 2 * off.weights and fp32.peak > off.peak
    assert estimate_memory(replace(base, precision="bf16")).peak == off.peak


def test_orders_of_magnitude():
    """Half-precision weights alone: SD 1.x ~2 GB, SDXL ~6.5 GB; a 512 px SD 1.x step without
    checkpointing needs a few GB and SDXL at 1024 without it well over 10."""
    sd1 = estimate_memory(MemorySettings(shape="sd1", resolution=512))
    xl = estimate_memory(MemorySettings(shape="sdxl", resolution=1024))
    assert 1.7 * GIB < sd1.weights < 2.0 * GIB and 6.0 * GIB < xl.weights < 6.7 * GIB
    assert 2.2 * GIB < sd1.peak < 5 * GIB
    assert 10 * GIB < xl.peak < 24 * GIB
    assert _peak(shape="tiny", resolution=64) < 0.5 * GIB


def test_suggestions_when_over_budget():
    s = MemorySettings(shape="sdxl", resolution=1024, batch_size=2, precision="fp16", preview_size=1024)
    est = estimate_memory(s)
    assert fit_options(s, est.needs()) == []  # it fits: nothing to suggest
    free = int(est.phases["training step"] * 0.8)
    options = fit_options(s, free)
    assert options, "over budget: at least one way to fit"
    changes = [o.change for o in options]
    assert changes[0] == "turn on gradient checkpointing", changes
    assert any(c.startswith("resolution ") for c in changes)
    for o in options:
        assert estimate_memory(o.settings).needs() <= free and o.peak == estimate_memory(o.settings).peak
    # the mildest fitting version of a change: one resolution step more would not be needed
    res = next(o for o in options if o.change.startswith("resolution "))
    assert estimate_memory(replace(s, resolution=res.settings.resolution + 64)).needs() > free
    # no single change is enough: one combination
    tight = estimate_memory(MemorySettings(shape="sdxl", resolution=768, batch_size=1, precision="fp16",
                                           gradient_checkpointing=True, preview_size=256)).needs()
    combo = fit_options(replace(s, precision="fp32"), tight)
    assert len(combo) == 1 and "+" in combo[0].change and combo[0].settings.gradient_checkpointing
    assert estimate_memory(combo[0].settings).needs() <= tight
    assert fit_options(s, int(0.5 * GIB)) == []  # the weights alone do not fit: no setting helps


def test_parameter_counts_are_the_bundled_configs():
    """The table's parameter counts are the models' (built on the meta device: no memory, no time)."""
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from models.tiny import tiny_components, tiny_sd2v_components, tiny_sdxl_components

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    configs = Path(__file__).resolve().parents[1] / "models" / "configs"
    for shape, folder in (("sd1", "sd1"), ("sd2", "sd2"), ("sdxl", "sdxl")):
        d = configs / folder
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(json.loads((d / "unet" / "config.json").read_text()))
            vae = AutoencoderKL.from_config(json.loads((d / "vae" / "config.json").read_text()))
            texts = [CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder"))]
            if (d / "text_encoder_2").is_dir():
                texts.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(d / "text_encoder_2")))
        got = SHAPES[shape]
        assert got.unet_params == count(unet) and got.vae_params == count(vae), shape
        assert got.text_params == tuple(count(t) for t in texts), shape
        assert got.text_widths == tuple((t.config.hidden_size, t.config.num_hidden_layers) for t in texts), shape
    for shape, build in (("tiny", tiny_components), ("tiny-sdxl", tiny_sdxl_components),
                         ("tiny-sd2v", tiny_sd2v_components)):
        parts = build()
        texts = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
        assert SHAPES[shape].unet_params == count(parts["unet"]) and SHAPES[shape].vae_params == count(parts["vae"])
        assert SHAPES[shape].text_params == tuple(count(t) for t in texts), shape


def test_model_shape_without_loading(tmp_path):
    assert model_shape("tiny") == "tiny" and model_shape("TINY-SDXL") == "tiny-sdxl"
    folder = tmp_path / "xl"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"text_encoder_2": ["transformers", "CLIPTextModel"]}))
    assert model_shape(str(folder)) == "sdxl"
    models = tmp_path / "models"
    (models / "named").mkdir(parents=True)
    (models / "named" / "model_index.json").write_text("{}")
    (models / "named" / "text_encoder").mkdir()
    (models / "named" / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 1024}))
    assert model_shape("named", models) == "sd2"  # a name in the models folder, as the loader reads it
    assert model_shape("someone/some-model") is None
    for name in BUILTIN_MODELS:  # every built-in has an estimate, also one added after this table
        assert model_shape(name) in SHAPES and estimate_memory(MemorySettings(model_shape(name), 64)).peak < GIB
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert model_shape(str(tmp_path / "broken.safetensors")) is None


def test_preflight_text():
    cfg = TrainConfig(model="tiny", resolution=64, preview_every=0)
    cpu = preflight_text(cfg, on_gpu=False)
    assert cpu.startswith("Estimated peak GPU memory:") and "the estimate is for training on a GPU" in cpu
    assert "(tiny, 64 px" in cpu
    assert "(toy, sized like tiny, 64 px" in preflight_text(replace(cfg, model="toy"), on_gpu=False)
    xl = TrainConfig(model="/nowhere/model.ckpt", resolution=1024, batch_size=2, mixed_precision="fp16")
    s = settings_for(xl, "sd1")
    assert (s.shape, s.resolution, s.batch_size, s.precision, s.preview_size) == ("sd1", 1024, 2, "fp16", 1024)
    need = estimate_memory(s).needs()
    roomy = preflight_text(xl, gpu=(need + GIB, 80 * GIB, "Big GPU"))
    assert "assumed" in roomy and "Fits: " in roomy and "Big GPU" in roomy
    tight = preflight_text(xl, gpu=(int(need * 0.7), 8 * GIB, "Small GPU"))
    assert "Likely too much for Small GPU" in tight and "Would fit: turn on gradient checkpointing" in tight
    hopeless = preflight_text(xl, gpu=(GIB // 4, GIB, "Tiny GPU"))
    assert "no setting here makes it fit" in hopeless
    assert settings_for(replace(xl, mixed_precision="no"), "sd1").precision == "fp32"


def test_calibration_factor_round_trips():
    s = MemorySettings(shape="sd1", resolution=512, gradient_checkpointing=True)
    step = estimate_memory(s).phases["training step"]
    assert calibration_factor(step, s) == pytest.approx(1.0, abs=1e-3)
    fixed = CALIBRATION["fixed_bytes"]
    assert calibration_factor(int(fixed + 1.2 * (step - fixed)), s) == pytest.approx(1.2, abs=1e-3)


def test_train_command_prints_the_estimate_before_the_model_loads(data):
    """`app.py train` says the estimate first; here the run then fails (no such embedding)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(root / "app.py"), "--data-dir", str(data.root), "train", "--no-bar",
                           "--embedding", "nosuch", "--dataset", "nosuch", "--model", "tiny", "--resolution", "64"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines and lines[0].startswith("memory: Estimated peak GPU memory:"), done.stdout + done.stderr
    assert "tiny, 64 px, batch 1" in lines[0]
    if not torch.cuda.is_available():
        assert lines[0].endswith("the estimate is for training on a GPU.")
    loading = [i for i, line in enumerate(lines) if "loading base model" in line]
    assert not loading or loading[0] > 0


def test_train_form_shows_the_estimate(tmp_path):
    """The Train form's memory line: the same text as `app.py train`, from the form's values; the
    tab builds with it wired."""
    import gradio as gr

    from ui.state import AppContext
    from ui.train_tab import build, memory_estimate
    from workspace.datadir import DataDir

    ctx = AppContext(data=DataDir.at(tmp_path / "data").ensure())
    line = memory_estimate(ctx, "tiny", 64, 2, "auto", True, 0)
    expected = preflight_text(TrainConfig(model="tiny", resolution=64, batch_size=2, gradient_checkpointing=True,
                                          preview_every=0), ctx.data.models)
    assert line == expected and "tiny, 64 px, batch 2" in line and "gradient checkpointing" in line
    assert "(tiny, 512 px, batch 1, fp16" in memory_estimate(ctx, "", None, None, None, None, None)  # empty: defaults
    with gr.Blocks() as demo:
        build(ctx, demo)
    assert any(getattr(b, "elem_id", None) == "train_memory" for b in demo.blocks.values())
