"""Helpers shared by the embedding-kind tests: a standard embedding to start from, parts moved as
training would move them, and the two training checks every trainable kind must pass (bit-exact
resume with every source of randomness on; non-finite steps skipped, then the run stopped with
only finite snapshots kept; through `app.py train`, a SIGKILL mid-run leaves files that resume)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from embeddings.create import create_embedding
from embeddings.embedding import Embedding
from embeddings.formats import load_embedding, save_embedding
from embeddings.kinds import kind_of
from jobs.registry import Job
from tests.process_fixtures import sigkill_when
from training.checkpoint import TrainState, load_bundle
from training.run_folder import RunFolder
from training.trainer import train

# every source of randomness on: tag shuffle, flips, random latents, vector shuffle, accumulation
NOISY = dict(flip_p=0.5, latent_sampling="random", vector_shuffle="all", grad_accum=2, batch_size=2,
             shuffle_tags=True, lr="0.02", lr_kind="cosine", warmup_steps=1)

Make = Callable[[Embedding], Embedding]  # a standard embedding -> the kind under test


def std_embedding(model, name: str = "zork", vectors: int = 2) -> Embedding:
    return create_embedding(model, name, "cat", vectors)


def moved(emb: Embedding, seed: int = 0, scale: float = 0.3) -> Embedding:
    """`emb` with its parts moved by seeded noise, as training would (groups / anchors then differ)."""
    gen = torch.Generator().manual_seed(seed)
    parts = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in emb.parts.items()}
    return kind_of(emb).rebuild(emb, parts, step=emb.step, metadata=dict(emb.metadata))


def check_resume_is_bit_exact(model, data, dataset, make: Make, **settings) -> TrainState:
    """4 steps in one run == 2 steps + resume + 2 steps, bit for bit, for `make(std_embedding)`
    trained with NOISY (+ `settings`). Returns the 2-step run's resume bundle for the kind's own checks."""
    from train_fixtures import tiny_config

    noisy = {**NOISY, **settings}

    def fresh() -> None:
        save_embedding(make(std_embedding(model, "flatcol")), data.embeddings / "flatcol.safetensors")

    fresh()
    whole = train(tiny_config(data, dataset, max_steps=4, run_name="whole", **noisy), model, data,
                  Job(id="a", kind="train", title="a"))
    fresh()
    train(tiny_config(data, dataset, max_steps=2, run_name="half", **noisy), model, data,
          Job(id="b", kind="train", title="b"))
    run = RunFolder(data.runs / "half")
    state = load_bundle(run.bundle_path)
    rest = train(tiny_config(data, dataset, max_steps=4, run_name="half", **noisy), model, data,
                 Job(id="c", kind="train", title="c"), run=run, resume=True)
    a = load_embedding(whole["files"]["safetensors"])
    b = load_embedding(rest["files"]["safetensors"])
    kind = make(std_embedding(model)).kind
    assert state.embedding_kind == kind and b.kind == kind and a.equal(b)
    assert not any(type(p).__name__ == "RoutedProcessor" for p in model.unet.attn_processors.values())
    return state


def check_non_finite_steps_stop(model, data, dataset, make: Make) -> None:
    """A learning rate that overflows: each non-finite step is skipped, the run stops after
    `nan_patience` in a row, and every snapshot kept is finite and of the kind."""
    from train_fixtures import tiny_config

    from training.errors import TrainingError

    emb = make(std_embedding(model, "flatcol"))
    save_embedding(emb, data.embeddings / "flatcol.safetensors")
    with pytest.raises(TrainingError, match="non-finite steps in a row"):
        train(tiny_config(data, dataset, lr="1e30", max_steps=5, nan_patience=2, run_name="nan"),
              model, data, Job(id="n", kind="train", title="n"))
    snaps = list((data.runs / "nan" / "snapshots").glob("*.safetensors"))
    assert snaps and all(load_embedding(p).is_finite() and load_embedding(p).kind == emb.kind for p in snaps)
    assert not any(type(p).__name__ == "RoutedProcessor" for p in model.unet.attn_processors.values())


def check_sigkill_then_resume(data, tmp_path, dataset, kind: str, **settings) -> TrainState:
    """`app.py train` on the saved embedding "flatcol", killed with SIGKILL in the middle of its work:
    the resume bundle and every snapshot are of `kind` (and finite), and resuming it 2 more steps
    ends in a final embedding of `kind` at that step. Returns the killed run's bundle."""
    from test_cli_train import _app, _config

    proc = _app(data, "--config", str(_config(tmp_path, dataset, max_steps=1000, run_name="killed", **settings)))
    run = RunFolder(data.runs / "killed")
    sigkill_when(proc, lambda: run.bundle_path.is_file() and len(run.read_loss()) >= 3, timeout=300)
    state = load_bundle(run.bundle_path)
    assert state.embedding_kind == kind
    snaps = run.snapshot_files()
    assert snaps and all(load_embedding(p).kind == kind and load_embedding(p).is_finite() for p in snaps)
    proc = _app(data, "--resume", str(run.path), "--steps", str(state.step + 2))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    final = load_embedding(run.final / "flatcol.safetensors")
    assert final.kind == kind and final.step == state.step + 2
    return state
