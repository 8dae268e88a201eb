"""Training on a CUDA GPU: fp16 and bf16 runs, the GradScaler, clipping, gradient checkpointing,
the VAE's place, previews, exact resume. Marked `cuda`; skipped with the reason without a GPU.

Run them with `pytest -m cuda` (benchmarks/gpu_check.sh does, on a fresh checkout). Each test
loads its own copy of a built-in model: training moves the weights to the GPU in the compute
dtype, and the session's shared `tiny_model` must stay as the CPU tests expect it.
"""

from __future__ import annotations

import math

import pytest
import torch
from cuda_checks import (
    CUDA,
    bf16_ok,
    check_clip_saw_unscaled,
    check_overflow_skipped,
    cuda_plan,
    first_step_grads,
    image_is_picture,
    module_devices,
    overflow_step,
    overflowing_gradients,
    prepared,
    raise_scale,
    record_calls,
    step_peak_bytes,
    vectors_copy,
)
from train_fixtures import make_dataset, make_embedding, tiny_config

from embeddings.formats import load_embedding
from jobs.registry import Job
from models.load import load_base_model
from training.checkpoint import load_bundle
from training.run_folder import RunFolder
from training.trainer import OutcomeKind, bookkeeping, guarded_step, train

pytest_plugins = ["train_fixtures"]
pytestmark = CUDA

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _job(name: str = "t") -> Job:
    return Job(id=name, kind="train", title=name)


def _precision(precision: str) -> None:
    if precision == "bf16" and not bf16_ok():
        pytest.skip("this GPU does not support bf16")


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_run(data, solid_dataset, name, precision):
    """A whole run through train(): the weights on the GPU in the compute dtype, a finite loss at
    every step, vectors that moved, and files that load back."""
    _precision(precision)
    model = load_base_model(name, data)
    source = make_embedding(model, data)
    before = load_embedding(source)
    cfg = tiny_config(data, solid_dataset, model=name, mixed_precision=precision, lr_kind="constant", max_steps=4,
                      snapshot_formats=["safetensors", "pt", "png"])
    job = _job()
    result = train(cfg, model, data, job)
    plan_line = f"device cuda {precision}" + (" + grad scaler" if precision == "fp16" else "")
    assert any(e.data["text"].startswith(plan_line) for e in job.events("message")), plan_line
    for module in (*model.text_encoders, model.unet):
        assert module_devices(module) == {"cuda"} and module.dtype == DTYPES[precision]
    losses = [e.data["loss"] for e in job.events("loss")]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert result["steps_done"] == 4
    final = load_embedding(result["embedding"])
    assert final.step == 4
    for key, v in before.vectors.items():
        got = final.vectors[key]
        assert got.shape == v.shape and torch.isfinite(got).all()
        assert float((got - v).norm()) > 1e-3 * float(v.norm()), f"{key} did not move"
    assert set(result["files"]) == {"safetensors", "pt", "png"}
    for fmt, path in result["files"].items():
        assert load_embedding(path).equal(final), fmt


@pytest.mark.parametrize("inject", ["gradient hook", "scale too high"])
def test_fp16_overflow_skips_the_step(data, solid_dataset, inject):
    """An fp16 overflow: the step is skipped, the scale lowered, the vectors untouched; the next
    step trains. Injected two ways: an infinite gradient on the vectors, and a scale so high that
    the scaled loss overflows fp16 in the UNet's backward pass (how it happens for real)."""
    model = load_base_model("tiny", data)
    make_embedding(model, data)
    st = prepared(tiny_config(data, solid_dataset, mixed_precision="fp16", lr_kind="constant", max_steps=20),
                  model, data, cuda_plan("fp16"))
    assert st.scaler is not None and st.scaler.is_enabled()
    for _ in range(10):  # the first steps may overflow at the initial scale: wait for a real one
        if guarded_step(st).kind == OutcomeKind.STEPPED:
            break
    assert st.step == 1
    result = overflow_step(st, overflowing_gradients if inject == "gradient hook" else raise_scale)
    check_overflow_skipped(result)
    if inject == "scale too high":
        st.scaler.update(2.0**10)  # halving back from 2^99 one skipped step at a time would take ~90 steps
    before = vectors_copy(st)
    for _ in range(10):
        if guarded_step(st).kind == OutcomeKind.STEPPED:
            break
    assert st.step == 2 and not torch.equal(before["clip_l"], st.vectors["clip_l"])


@pytest.mark.parametrize("clip_mode", ["none", "norm", "value"])
def test_clipping_sees_unscaled_gradients(data, solid_dataset, clip_mode):
    """fp16 with a GradScaler against fp32 on the same GPU, same seed: unclipped, the gradients the
    optimizer gets agree (within fp16's error); clipped, both end exactly at the bound. Had the
    clip seen the scaled gradients, the fp16 run's would end at bound / scale."""
    make_embedding(load_base_model("tiny", data), data)
    fp32 = cuda_plan("no")
    _, raw, _ = first_step_grads(tiny_config(data, solid_dataset, run_name="raw", mixed_precision="no"),
                                 load_base_model("tiny", data), data, fp32)
    clip = 0.25 * float(raw.norm() if clip_mode == "norm" else raw.abs().max())
    cfg = dict(clip_mode=clip_mode, clip_value=repr(clip))
    _, ref, _ = first_step_grads(tiny_config(data, solid_dataset, run_name="ref", mixed_precision="no", **cfg),
                                 load_base_model("tiny", data), data, fp32)
    # A moderate initial scale so the very first step does not overflow (which would skip it and
    # compare different batches); the order unscale -> clip does not depend on the scale's size.
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    _, scaled, st = first_step_grads(tiny_config(data, solid_dataset, run_name="fp16", mixed_precision="fp16", **cfg),
                                     load_base_model("tiny", data), data, cuda_plan("fp16"), scaler=scaler)
    assert st.scaler.get_scale() == 2.0**10  # scaled, no overflow
    assert float(scaled.norm()) > 0
    # fp16 against fp32 (latents, UNet and text encoder in half precision) differ by a few percent;
    # a gradient seen before unscaling would be 1024x off, so a loose tolerance still tells them apart
    check_clip_saw_unscaled(ref, scaled, clip_mode, clip, rel=0.25)


def test_gradient_checkpointing_same_loss_lower_peak(data, tmp_path):
    """The same first-step loss with and without checkpointing, and a lower peak of memory
    allocated during the step (weights excluded). 512 px on the tiny model: 64x64 latents, so
    activations, not weights, dominate the step."""
    dataset = make_dataset(tmp_path / "big", n=4, size=512)
    make_embedding(load_base_model("tiny", data), data)
    runs = {}
    for ckpt in (False, True):
        model = load_base_model("tiny", data)  # checkpointing changes module state: a fresh model each
        cfg = tiny_config(data, dataset, mixed_precision="fp16", resolution=512, batch_size=2, lr_kind="constant",
                          max_steps=3, gradient_checkpointing=ckpt, run_name=f"ckpt-{ckpt}")
        st = prepared(cfg, model, data, cuda_plan("fp16"))
        st.scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)  # no first-step overflow (see above)
        outcome, peak = step_peak_bytes(st)
        assert outcome.kind == OutcomeKind.STEPPED
        assert bool(model.unet.is_gradient_checkpointing) is ckpt
        runs[ckpt] = (outcome.loss, peak)
        del st, model
    (loss_off, peak_off), (loss_on, peak_on) = runs[False], runs[True]
    assert loss_on == pytest.approx(loss_off, rel=1e-4)
    assert peak_on < 0.8 * peak_off, f"checkpointing: {peak_on / 2**20:.1f} MiB, without: {peak_off / 2**20:.1f} MiB"


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_vae_off_the_gpu_while_training_and_previews_render(data, solid_dataset, name):
    """After the latents are cached the VAE leaves the GPU: every UNet call of a training step sees
    it on the CPU. A preview brings it to the GPU to decode, renders a real image, and sends it back."""
    model = load_base_model(name, data)
    make_embedding(model, data)
    cfg = tiny_config(data, solid_dataset, model=name, mixed_precision="fp16", lr_kind="constant", max_steps=2,
                      preview_every=1, preview_steps=3, preview_seeds=[1, 2])
    st = prepared(cfg, model, data, cuda_plan("fp16"))
    assert module_devices(model.vae) == {"cpu"}
    during_step: list = []
    with record_calls(model.unet, during_step, lambda: module_devices(model.vae)):
        outcome = guarded_step(st)
    assert outcome.kind in (OutcomeKind.STEPPED, OutcomeKind.SKIPPED)
    assert during_step and all(d == {"cpu"} for d in during_step), during_step
    if outcome.kind == OutcomeKind.SKIPPED:  # an initial-scale overflow: take the next step
        outcome = guarded_step(st)
        assert outcome.kind == OutcomeKind.STEPPED
    decoding: list = []
    with record_calls(model.vae.decoder, decoding, lambda: module_devices(model.vae)):
        bookkeeping(st, outcome)
    assert decoding == [{"cuda"}] * len(st.previews), decoding
    assert module_devices(model.vae) == {"cpu"}
    assert not [e for e in st.job.events("warning") if "preview" in e.data["text"]]
    shown = st.job.events("preview")
    assert len(shown) == 2
    for e in shown:
        image_is_picture(e.data["path"], (st.previews[0].width, st.previews[0].height))


def test_exact_resume_on_cuda(data, solid_dataset):
    """4 steps in one run == 2 steps + resume + 2 steps, bit for bit, in fp16 with the scaler (its
    state is in the bundle), with every source of randomness on and deterministic kernels."""
    noisy = dict(flip_p=0.5, latent_sampling="random", vector_shuffle="all", grad_accum=2, batch_size=2,
                 shuffle_tags=True, lr="0.02", lr_kind="cosine", warmup_steps=1, mixed_precision="fp16")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        model = load_base_model("tiny", data)
        source = make_embedding(model, data)
        original = source.read_bytes()  # training replaces the library file; the model is fp16 on the GPU after
        whole = train(tiny_config(data, solid_dataset, max_steps=4, run_name="whole", **noisy), model, data, _job("a"))
        source.write_bytes(original)  # the same fresh embedding again
        half = train(tiny_config(data, solid_dataset, max_steps=2, run_name="half", **noisy), model, data, _job("b"))
        run = RunFolder(data.runs / "half")
        bundle = load_bundle(run.bundle_path)
        assert bundle.step == 2 and bundle.scaler, "an fp16 bundle keeps the scaler's state"
        rest = train(tiny_config(data, solid_dataset, max_steps=4, run_name="half", **noisy), model, data,
                     _job("c"), run=run, resume=True)
    finally:
        torch.use_deterministic_algorithms(was)
    assert half["step"] == 2 and rest["step"] == 4 and not rest["fresh_optimizer"]
    a = load_embedding(whole["files"]["safetensors"]).vectors["clip_l"]
    b = load_embedding(rest["files"]["safetensors"]).vectors["clip_l"]
    assert torch.equal(a, b), f"max difference {float((a - b).abs().max()):.3e}"
    assert [r["loss"] for r in run.read_loss()] == [r["loss"] for r in RunFolder(data.runs / "whole").read_loss()]
