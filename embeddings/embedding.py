"""The `Embedding` value: named vectors per text encoder, a step count and metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeddings.families import family_for_widths

MAX_VECTORS = 75  # one 77-token CLIP chunk minus BOS and EOS


def json_copy(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars), so a copy never shares kind_info."""
    if isinstance(value, dict):
        return {k: json_copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_copy(v) for v in value]
    return value


class EmbeddingError(ValueError):
    """A user-facing problem with an embedding (bad name, bad init text, bad shape)."""


class EmbeddingFileError(EmbeddingError):
    """A file that cannot be read or written as an embedding. The message names file and reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass
class Embedding:
    """A textual-inversion embedding.

    `vectors` maps an encoder key (`clip_l`, `clip_h`, `clip_g`: see `embeddings.families`) to a
    float32 CPU tensor of shape [n_vectors, width]. SD 1.x and 2.x embeddings have one entry, SDXL two with equal row counts.
    `metadata` holds JSON-serialisable values only (init text, base model, settings ...).

    `kind` says how the vectors condition the UNet (`embeddings.kinds`: "standard", "per-layer").
    Whatever the kind, `vectors` is its *standard part*: the one set every other tool loads and
    every format writes. A kind with more than one set keeps its own tensors in `parts` (per-layer:
    [groups, n_vectors, width] per encoder key) and what they mean in `kind_info` (JSON values:
    grouping, group names ...); the kind's module validates and interprets both.
    """

    name: str
    vectors: dict[str, torch.Tensor]
    step: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    kind: str = "standard"
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    kind_info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.vectors:
            raise EmbeddingError(f"embedding {self.name!r} has no vectors")
        clean: dict[str, torch.Tensor] = {}
        rows = None
        for key, t in self.vectors.items():
            if not isinstance(t, torch.Tensor):
                raise EmbeddingError(f"embedding {self.name!r}: {key} is not a tensor")
            t = t.detach().to("cpu", torch.float32)
            if t.dim() == 1:
                t = t.unsqueeze(0)
            if t.dim() != 2:
                raise EmbeddingError(
                    f"embedding {self.name!r}: {key} has shape {tuple(t.shape)}, expected [vectors, width]"
                )
            if rows is not None and t.shape[0] != rows:
                raise EmbeddingError(
                    f"embedding {self.name!r}: encoders disagree on the vector count ({rows} vs {t.shape[0]})"
                )
            rows = t.shape[0]
            clean[key] = t.contiguous()
        self.vectors = clean
        self.step = int(self.step or 0)
        for key, t in self.parts.items():
            if not isinstance(t, torch.Tensor):
                raise EmbeddingError(f"embedding {self.name!r}: part {key} is not a tensor")
        self.parts = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in self.parts.items()}
        if self.kind == "standard" and self.parts:
            raise EmbeddingError(f"embedding {self.name!r}: a standard embedding has no parts")

    @property
    def num_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(v.shape[1]) for k, v in self.vectors.items()}

    @property
    def family(self) -> str | None:
        """The published model family whose widths match exactly, or None (e.g. the tiny models)."""
        return family_for_widths(self.widths)

    def fits(self, widths: dict[str, int]) -> bool:
        """Whether this embedding can be used with a model whose encoders have these widths."""
        return self.widths == dict(widths)

    def mismatch_reason(self, widths: dict[str, int]) -> str | None:
        if self.fits(widths):
            return None
        have = " + ".join(f"{k} {w}" for k, w in self.widths.items())
        want = " + ".join(f"{k} {w}" for k, w in widths.items())
        return f"width {have} does not match the model's {want}"

    def norms(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in v.norm(dim=1)] for k, v in self.vectors.items()}

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(v).all()) for v in (*self.vectors.values(), *self.parts.values()))

    def copy(self, **changes: Any) -> "Embedding":
        vectors = changes.pop("vectors", {k: v.clone() for k, v in self.vectors.items()})
        metadata = changes.pop("metadata", dict(self.metadata))
        return Embedding(
            name=changes.pop("name", self.name),
            vectors=vectors,
            step=changes.pop("step", self.step),
            metadata=metadata,
            kind=changes.pop("kind", self.kind),
            parts=changes.pop("parts", {k: v.clone() for k, v in self.parts.items()}),
            kind_info=changes.pop("kind_info", json_copy(self.kind_info)),
            **changes,
        )

    def equal(self, other: "Embedding") -> bool:
        """Bit-exact equality of the vectors, the kind and its parts (names and metadata are not compared)."""
        def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
            return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

        return (same(self.vectors, other.vectors) and self.kind == other.kind and same(self.parts, other.parts)
                and self.kind_info == other.kind_info)

    def summary(self) -> dict[str, Any]:
        """What `inspect` shows; JSON-serialisable."""
        norms = self.norms()
        return {
            "name": self.name,
            "kind": self.kind,
            "vectors": self.num_vectors,
            "widths": self.widths,
            "family": self.family,
            "step": self.step,
            "healthy": self.is_finite(),
            "norms": {k: [round(x, 6) if math.isfinite(x) else str(x) for x in v] for k, v in norms.items()},
            "metadata": self.metadata,
        }
