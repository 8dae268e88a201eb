"""Training guards on the tiny model: the not-learning warning, gradient checkpointing, gradient clipping."""

from __future__ import annotations

import pytest
import torch

from embeddings.formats import load_embedding
from jobs.registry import Job
from models.load import load_base_model
from training.trainer import train

pytest_plugins = ["train_fixtures"]

ADAM_EPS = 1e-8  # torch.optim.AdamW's default, which the trainer uses


def _job() -> Job:
    return Job(id="t", kind="train", title="t")


def _not_learning(job: Job) -> list[str]:
    return [e.data["text"] for e in job.events("warning") if e.data["text"].startswith("not learning")]


@pytest.mark.parametrize("lr,warns", [("1e-12", True), ("0.02", False)])
def test_not_learning_warning(tiny_model, data, solid_dataset, tiny_embedding, lr, warns):
    from train_fixtures import tiny_config

    cfg = tiny_config(data, solid_dataset, lr=lr, lr_kind="constant", max_steps=4, not_learning_steps=2)
    before = load_embedding(tiny_embedding)
    job = _job()
    result = train(cfg, tiny_model, data, job)
    assert result["steps_done"] == 4
    found = _not_learning(job)
    if warns:
        # once only, at the configured step, naming the embedding
        assert len(found) == 1 and "after 2 steps" in found[0] and "'flatcol'" in found[0], found
    else:
        assert found == []
        after = load_embedding(result["embedding"])
        moved = (after.vectors["clip_l"] - before.vectors["clip_l"]).norm() / before.vectors["clip_l"].norm()
        assert moved > cfg.not_learning_threshold  # the normal run really moved past the threshold


def _count_calls(module: torch.nn.Module) -> list[int]:
    calls = [0]
    # a pre-hook: torch's checkpoint stops a recomputation early, once it has what backward needs
    module.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _checkpointing_flags(model) -> list[bool]:
    return [bool(model.unet.is_gradient_checkpointing),
            *(bool(te.is_gradient_checkpointing) for te in model.text_encoders)]


def test_gradient_checkpointing_same_result_and_disabled_after(data, solid_dataset, tiny_embedding, tmp_path):
    from train_fixtures import tiny_config

    original = tiny_embedding.read_bytes()  # training replaces the library file: restore it per run
    results = {}
    for ckpt in (False, True):
        tiny_embedding.write_bytes(original)
        # a fresh model per run: checkpointing changes module state, the shared fixture must stay clean
        model = load_base_model("tiny", data)
        # Blocks whose input depends on the vectors (so backward must go through them): a UNet resnet
        # after the first cross-attention, and a part of the first text-encoder layer (transformers
        # checkpoints a layer's forward, not its __call__, so the layer's own hook runs once anyway).
        unet_block = _count_calls(model.unet.up_blocks[1].resnets[0])
        te_layer = _count_calls(model.text_encoders[0].encoder.layers[0].mlp)
        cfg = tiny_config(data, solid_dataset, lr="0.02", lr_kind="constant", max_steps=3, batch_size=2,
                          gradient_checkpointing=ckpt, run_name=f"ckpt-{ckpt}")
        job = _job()
        result = train(cfg, model, data, job)
        results[ckpt] = (
            [e.data["loss"] for e in job.events("loss")],
            load_embedding(result["files"]["safetensors"]).vectors["clip_l"],
            (unet_block[0], te_layer[0]),
        )
        assert _checkpointing_flags(model) == [False, False]  # left as it was found
        assert not model.unet.training and not model.text_encoders[0].training
    (loss_off, vec_off, calls_off), (loss_on, vec_on, calls_on) = results[False], results[True]
    # checkpointing really happened: the checkpointed blocks ran again in each backward pass
    assert calls_off == (3, 3)
    assert calls_on == (6, 6)
    assert len(loss_on) == len(loss_off) == 3
    assert loss_on == pytest.approx(loss_off, rel=0, abs=1e-6)
    assert torch.allclose(vec_on, vec_off, rtol=0, atol=1e-6)
    tiny_embedding.write_bytes(original)
    assert not torch.equal(vec_on, load_embedding(tiny_embedding).vectors["clip_l"])  # and it did train


@pytest.mark.parametrize("mode", ["value", "norm"])
def test_gradient_clipping_bounds_the_first_update(tiny_model, data, solid_dataset, tiny_embedding, mode):
    """AdamW's first step moves each element by lr * g / (|g| + eps): about lr whatever the gradient's
    size, unless the gradient is far below eps. A clip value of 1e-10 makes every clipped element at
    most 1e-10, so the update shrinks to at most lr * c / (c + eps), about lr / 100. Without clipping the
    same step moves the largest element by about lr. So the step size shows the optimizer got the
    clipped gradient."""
    from train_fixtures import tiny_config

    lr, clip = 0.02, 1e-10
    before = load_embedding(tiny_embedding).vectors["clip_l"]
    original = tiny_embedding.read_bytes()  # training replaces the library file: restore it per run
    moves = {}
    for clip_mode in ("none", mode):
        tiny_embedding.write_bytes(original)
        cfg = tiny_config(data, solid_dataset, lr=str(lr), lr_kind="constant", max_steps=1, clip_mode=clip_mode,
                          clip_value=str(clip), run_name=f"clip-{clip_mode}")
        result = train(cfg, tiny_model, data, _job())
        moves[clip_mode] = (load_embedding(result["files"]["safetensors"]).vectors["clip_l"] - before).abs()
    bound = lr * clip / (clip + ADAM_EPS)
    assert float(moves[mode].max()) <= bound * (1 + 1e-3)
    assert float(moves[mode].max()) > 0  # still a step, just a small one
    assert float(moves["none"].max()) > 0.5 * lr  # the unclipped step is ~50x larger
