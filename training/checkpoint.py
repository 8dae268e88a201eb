"""The resume bundle: everything needed to continue a run exactly where it stopped.

A resumed run must produce the same vectors, bit for bit, as a run that never stopped (on CPU
with a fixed seed). That needs more than the embedding: the optimizer moments, the GradScaler,
the step and the position in the epoch's batch order, every random generator the loop draws
from, and the vectors the "not learning" check compares against. The bundle holds only plain
Python values and CPU tensors, so it loads with `torch.load(weights_only=True)` (no pickle code
runs), and it is written atomically: a kill leaves the previous bundle.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import SCHEMA_KEY, ConfigError, TrainConfig
from workspace.atomic import atomic_write_bytes

BUNDLE_VERSION = 1  # the bundle's own layout; the settings inside carry their own schema version


class CheckpointError(ValueError):
    """A resume bundle that cannot be used. The message names the file and the reason."""


@dataclass
class TrainState:
    """The loop's position and everything random it depends on."""

    step: int  # optimizer steps stored in the embedding (absolute)
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # fp32 master vectors
    init_vectors: dict[str, torch.Tensor] = field(default_factory=dict)  # at the run's first step
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] = field(default_factory=dict)  # the main process's generators
    # Every process's generators, by rank, when the run had more than one (each draws its own noise).
    rank_rng: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # TrainConfig.to_dict() + the trainer's own keys
    embedding_name: str = ""
    embedding_metadata: dict[str, Any] = field(default_factory=dict)
    source_path: str = ""  # the embedding file the run started from
    not_learning_warned: bool = False
    smoothed_loss: float | None = None
    # The embedding's kind (embeddings.kinds): `vectors` are that kind's trainable tensors.
    embedding_kind: str = "standard"
    kind_info: dict[str, Any] = field(default_factory=dict)


def capture_rng(generator: torch.Generator, prompt_rng: random.Random) -> dict[str, Any]:
    """The loop's own generators plus the global ones (libraries may draw from those)."""
    np_state = np.random.get_state()
    return {
        "generator": generator.get_state(),
        "prompt": _py_state_to_plain(prompt_rng.getstate()),
        "python": _py_state_to_plain(random.getstate()),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
    }


def rng_for_rank(state: TrainState, rank: int, world: int) -> tuple[dict[str, Any] | None, str]:
    """The generators process `rank` of `world` continues from, and a note when that is not exact.

    A bundle written by the same number of processes gives each rank its own state. Any other
    count (or a bundle from before per-rank states were saved) gives rank 0 the main process's
    state and the other ranks their fresh seeds: training goes on, but not bit for bit."""
    if len(state.rank_rng) == world and world > 1:
        return state.rank_rng[rank], ""
    saved = len(state.rank_rng) or 1
    if saved == world:
        return state.rng, ""
    note = (f"the resume bundle holds the random state of {saved} process(es), this run has {world}: "
            "the other processes start from fresh seeds, so the run is not an exact continuation")
    return (state.rng if rank == 0 else None), note


def restore_rng(rng: dict[str, Any], generator: torch.Generator, prompt_rng: random.Random) -> None:
    generator.set_state(rng["generator"])
    prompt_rng.setstate(_plain_to_py_state(rng["prompt"]))
    random.setstate(_plain_to_py_state(rng["python"]))
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_bundle(path: Path, state: TrainState) -> Path:
    payload = {
        "version": BUNDLE_VERSION,
        "step": int(state.step),
        "epoch": int(state.epoch),
        "batch_in_epoch": int(state.batch_in_epoch),
        "vectors": {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.vectors.items()},
        "init_vectors": {k: v.detach().to("cpu", torch.float32).clone() for k, v in state.init_vectors.items()},
        "optimizer": _to_cpu(state.optimizer),
        "scaler": state.scaler,
        "rng": state.rng,
        "rank_rng": list(state.rank_rng),
        "settings": {SCHEMA_KEY: TrainConfig.SETTINGS_VERSION, **state.settings},  # written now: today's
        "embedding_name": state.embedding_name,
        "embedding_metadata": state.embedding_metadata,
        "source_path": state.source_path,
        "not_learning_warned": bool(state.not_learning_warned),
        "smoothed_loss": state.smoothed_loss,
        "embedding_kind": state.embedding_kind,
        "kind_info": state.kind_info,
    }
    for key, v in payload["vectors"].items():
        if not torch.isfinite(v).all():  # the loop never gets here with bad vectors; belt and braces
            raise CheckpointError(f"{Path(path).name}: refusing to save non-finite vectors ({key})")
    # To bytes first: torch.save to a file turns a full disk into a RuntimeError without errno;
    # atomic_write_bytes turns it into a SaveError naming the file.
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_bundle(path: Path) -> TrainState:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume bundle (the run saved none yet)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged zip
        raise CheckpointError(f"{path.name}: cannot read the resume bundle: {e}") from None
    if not isinstance(data, dict) or data.get("version") != BUNDLE_VERSION:
        raise CheckpointError(f"{path.name}: not a resume bundle of version {BUNDLE_VERSION}")
    try:  # settings of an older schema come back under today's field names
        settings = TrainConfig.migrate(data["settings"], source=path.name)
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    return TrainState(
        step=data["step"],
        epoch=data["epoch"],
        batch_in_epoch=data["batch_in_epoch"],
        vectors=data["vectors"],
        init_vectors=data["init_vectors"],
        optimizer=data["optimizer"],
        scaler=data["scaler"],
        rng=data["rng"],
        rank_rng=list(data.get("rank_rng") or []),
        settings=settings,
        embedding_name=data["embedding_name"],
        embedding_metadata=data["embedding_metadata"],
        source_path=data.get("source_path", ""),
        not_learning_warned=data.get("not_learning_warned", False),
        smoothed_loss=data.get("smoothed_loss"),
        embedding_kind=data.get("embedding_kind", "standard"),  # bundles from before kinds: standard
        kind_info=dict(data.get("kind_info") or {}),
    )


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").clone()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_cpu(v) for v in value]
    return value


def _py_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _plain_to_py_state(plain: list) -> tuple:
    version, internal, gauss = plain
    return (version, tuple(internal), gauss)
