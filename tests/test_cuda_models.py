"""The model cache and Generate on a CUDA GPU. Marked `cuda`; skipped with the reason without one.

Switching models must hand the old model's GPU memory back (an 8 GB card cannot hold two SD
models), and Generate must run on the GPU, also right after a training run left the UNet there
and the VAE on the CPU.
"""

from __future__ import annotations

import gc

import pytest
import torch
from cuda_checks import CUDA, image_is_picture, record_calls
from train_fixtures import make_embedding, tiny_config

import models.cache
from embeddings.formats import load_embedding
from embeddings.prompt import generate
from jobs.registry import Job, JobRegistry, JobState
from models.load import load_base_model
from training.service import start_training
from training.trainer import train

pytest_plugins = ["train_fixtures"]
pytestmark = CUDA

MIB = 2**20
# What may stay allocated after a model is dropped: the cuBLAS/cuBLASLt workspaces of the thread
# that trained (kept per handle and stream by torch, by design); they do not grow with the model.
WORKSPACE_SLACK = 128 * MIB


@pytest.fixture
def empty_cache():
    models.cache.clear()
    yield
    models.cache.clear()


def _warm_up() -> None:
    """Create this thread's cuBLAS handle and workspace before the baseline is read."""
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        a = torch.ones(64, 64, device="cuda", dtype=dtype, requires_grad=True)
        (a @ a).sum().backward()
    torch.cuda.synchronize()


def _weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for m in (*model.text_encoders, model.unet) for p in m.parameters()
               if p.device.type == "cuda")


def test_switching_models_returns_gpu_memory(data, solid_dataset, empty_cache):
    """Train on the cached model through the worker (as the UI does), then ask the cache for
    another model: the first one's GPU memory comes back."""
    _warm_up()
    gc.collect()
    start = torch.cuda.memory_allocated()
    model = models.cache.get_model("tiny", data)
    make_embedding(model, data)
    registry = JobRegistry()
    job = start_training(registry, tiny_config(data, solid_dataset, mixed_precision="fp16", max_steps=2,
                                               preview_every=2, preview_steps=2), data)
    assert job.wait(300) == JobState.FINISHED, job.events("error")
    registry.shutdown()
    weights = _weight_bytes(model)
    assert weights > 0, "training left no weights on the GPU"
    held = torch.cuda.memory_allocated() - start
    assert held >= weights
    del model
    other = models.cache.get_model("tiny-sdxl", data)
    assert other.name == "tiny-sdxl"
    left = torch.cuda.memory_allocated() - start
    assert held - left >= weights, f"only {(held - left) / MIB:.1f} MiB came back of {weights / MIB:.1f} MiB of weights"
    assert left <= WORKSPACE_SLACK, f"{left / MIB:.1f} MiB still allocated after switching models"


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_generate_on_cuda(data, name):
    """The whole model on the GPU in fp16: an image of the asked size, the UNet ran on the GPU, and
    the same seed gives the same image."""
    model = load_base_model(name, data)
    make_embedding(model, data)
    emb = load_embedding(data.embeddings / "flatcol.safetensors")
    model.to("cuda", torch.float16)
    ran: list = []
    with record_calls(model.unet, ran, lambda: next(model.unet.parameters()).device.type):
        images = [generate(model, "a photo of flatcol", [emb], seed=3, steps=3, width=64, height=64)
                  for _ in range(2)]
    assert ran and set(ran) == {"cuda"}
    for k, img in enumerate(images):
        img.save(data.root / f"gen-{k}.png")
        image_is_picture(data.root / f"gen-{k}.png", (64, 64))
    assert images[0].tobytes() == images[1].tobytes()


def test_generate_after_training_on_cuda(data, solid_dataset):
    """The Generate tab right after a run, on the model the run used (the cache shares it)."""
    model = load_base_model("tiny", data)
    make_embedding(model, data)
    result = train(tiny_config(data, solid_dataset, mixed_precision="fp16", max_steps=2), model, data,
                   Job(id="t", kind="train", title="t"))
    emb = load_embedding(result["embedding"])
    image = generate(model, "a photo of flatcol", [emb], seed=3, steps=3, width=64, height=64)
    image.save(data.root / "after.png")
    image_is_picture(data.root / "after.png", (64, 64))


def test_generate_tab_uses_the_gpu(data, empty_cache):
    from ui.generate_tab import generate_images
    from ui.state import AppContext

    ctx = AppContext(data=data)
    model = ctx.model("tiny")
    make_embedding(model, data)
    ran: list = []
    with record_calls(model.unet, ran, lambda: next(model.unet.parameters()).device.type):
        result = generate_images(ctx, "tiny", "a photo of flatcol", "", 3, 3, 7.0, 64, 64, 1)
    assert len(result.images) == 1
    assert ran and set(ran) == {"cuda"}, f"the UNet ran on {sorted(set(ran))}"
