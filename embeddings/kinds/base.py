"""What every embedding kind answers, and how a kind's own tensors travel in files.

A kind is one object that knows how to make an embedding of its kind from a standard one,
check it, hand the trainer its trainable tensors and rebuild the embedding from them, say which
UNet routing it needs, give the conditioning tensors for a prompt, report itself, and say what
an export to a format that only holds a standard embedding leaves out. The trainer, the file
formats, the library, the CLI and the UI ask the kind (`embeddings.kinds.kind_of(emb)`) instead
of testing which kind they hold.

Conditioning tensors (`Kind.condition`) are per encoder key either [n, width] (the same on every
cross-attention layer) or [groups, n, width] (one set per group of a `LayerLayout`); a timed kind
(per-timestep) gives one set per prompt row, [B, 1, n, width] or [B, groups, n, width]. The prompt
encoder turns them into one context for the UNet (`embeddings.prompt`).

Files: a kind's extra tensors (`Embedding.parts`) are written as raw little-endian float32 in
base64 inside JSON (`encode_parts`), in the safetensors header and in our PNG info chunk, never
as extra tensors: A1111 refuses a one-encoder file with more than one tensor ("multiple terms")
and diffusers' `load_textual_inversion` wants exactly one key, so the tensor keys stay the
standard layout and every other tool reads the standard part. Raw bytes make the round trip
bit-exact.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds.routing import LayerLayout

# The header / info-chunk keys a non-standard kind writes beside the standard part.
KIND_KEY = "kind"
KIND_INFO_KEY = "kind_info"
KIND_PARTS_KEY = "kind_parts"
KIND_FILE_KEYS = (KIND_KEY, KIND_INFO_KEY, KIND_PARTS_KEY)


@dataclass(frozen=True)
class KindOption:
    """A choice a kind offers at creation (the Create tab and `app.py create` build their widgets from it)."""

    name: str
    label: str
    choices: tuple[str, ...]  # empty: free text (checked by the kind's `make`)
    default: str
    help: str


class Kind:
    """The base of every kind; `StandardKind` and `PerLayerKind` fill it in."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one line: what it is and what it costs
    options: ClassVar[tuple[KindOption, ...]] = ()
    # Conditioning that depends on the sample's denoising timestep (per-timestep): the trainer asks
    # `live_at` per batch, generation `condition_at` per denoising step.
    timed: ClassVar[bool] = False
    # Whether `Embedding.vectors` is a standard embedding other tools load. Without one (direct),
    # only our .safetensors holds the embedding (`embeddings.formats.writable_formats`).
    standard_part: ClassVar[bool] = True

    def make(self, standard: Embedding, unet, *, model=None, **options: str) -> Embedding:
        """An embedding of this kind that starts from `standard`'s vectors everywhere. `model`
        (tokenizers, text encoders) is for a kind that starts from the text encoder's outputs (direct)."""
        raise NotImplementedError

    def check(self, emb: Embedding) -> None:
        """Raise EmbeddingError when `emb.parts` / `emb.kind_info` do not fit together."""

    def standard_part_of(self, emb: Embedding) -> dict[str, torch.Tensor]:
        """The standard vectors other tools load, derived from `emb.parts` (a kind with parts says how)."""
        return emb.vectors

    def from_parts(self, standard: Embedding, parts: dict[str, torch.Tensor], info: dict[str, Any]) -> Embedding:
        """An embedding of this kind holding `parts` and `info`, with `standard`'s name, step and
        metadata; its standard part derived from the parts, and the whole checked (the end of `make`)."""
        emb = Embedding(standard.name, {k: v.clone() for k, v in standard.vectors.items()}, standard.step,
                        dict(standard.metadata), kind=self.name, parts=parts, kind_info=info)
        emb.vectors = self.standard_part_of(emb)
        self.check(emb)
        return emb

    def layout(self, emb: Embedding, unet) -> LayerLayout | None:
        """The layer routing `emb` needs on `unet` (None: the same conditioning on every layer)."""
        return None

    def trainable(self, emb: Embedding) -> dict[str, torch.Tensor]:
        """The tensors the trainer optimises, per encoder key (fresh copies)."""
        raise NotImplementedError

    def rebuild(self, emb: Embedding, tensors: dict[str, torch.Tensor], *, step: int,
                metadata: dict[str, Any]) -> Embedding:
        """`emb` with `tensors` (as `trainable` gave them, trained) in place, at `step`."""
        raise NotImplementedError

    def condition(self, emb: Embedding, layout: LayerLayout | None) -> dict[str, torch.Tensor]:
        """Conditioning tensors for `layout`'s groups: [n, width] or [groups, n, width] per key."""
        raise NotImplementedError

    def live_at(self, emb: Embedding, tensors: dict[str, torch.Tensor],
                timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trainer's conditioning tensors from the trainable `tensors` (live, with gradients) for a
        batch whose rows are at `timesteps` [B]: per key [B, 1, n, width] (one set per row) for a timed
        kind; the `tensors` themselves for the others."""
        return tensors

    def condition_at(self, emb: Embedding, layout: LayerLayout | None,
                     timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        """`condition` for prompt rows at `timesteps` [B] (a timed kind: [B, 1 or groups, n, width])."""
        return self.condition(emb, layout)

    def encoder_inputs(self, emb: Embedding) -> dict[str, torch.Tensor] | None:
        """None: the conditioning tensors are token embeddings, spliced into the text encoder's input.
        A kind whose tensors live in the encoder's OUTPUT space (direct) gives what the encoder reads at
        the embedding's slots instead ([n, width] per key); its tensors then replace the outputs there."""
        return None

    def clip_skip(self, emb: Embedding) -> int | None:
        """The clip skip `emb`'s tensors were made for, or None: any (token embeddings are read by the
        encoder whichever layer the context is then taken from). An output-space kind (direct) is
        tied to one: its tensors sit beside the other tokens' outputs of that layer."""
        return None

    def at_clip_skip(self, emb: Embedding, model, clip_skip: int) -> Embedding:
        """`emb` ready to train or generate at `clip_skip` (EmbeddingError when it cannot be)."""
        return emb

    def norms(self, tensors: dict[str, torch.Tensor]) -> dict[str, list]:
        """Norm of every learned vector: per key a list (standard) or a list per group (per-layer)."""
        return {k: v.detach().float().norm(dim=-1).cpu().tolist() for k, v in tensors.items()}

    def describe(self, emb: Embedding) -> dict[str, Any]:
        """What `inspect` and the library add about the kind (JSON-able)."""
        return {"kind": self.name}

    def export_note(self, emb: Embedding, fmt: str) -> str | None:
        """What writing `emb` as `fmt` leaves out, or None when the file holds all of it."""
        return None


def encode_parts(parts: dict[str, torch.Tensor]) -> dict[str, Any]:
    """JSON-able: per key {"shape", "dtype": "float32", "data": base64 of raw little-endian bytes}."""
    out = {}
    for key, t in parts.items():
        arr = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4", copy=False)
        out[key] = {"shape": list(arr.shape), "dtype": "float32", "data": base64.b64encode(arr.tobytes()).decode()}
    return out


def decode_parts(value: Any) -> dict[str, torch.Tensor]:
    """The inverse of `encode_parts` (accepts the JSON text or the already-decoded dict)."""
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, dict):
        raise EmbeddingError(f"{KIND_PARTS_KEY} is a {type(data).__name__}, not a table of tensors")
    out = {}
    for key, item in data.items():
        try:
            shape = [int(x) for x in item["shape"]]
            if item.get("dtype", "float32") != "float32":
                raise ValueError(f"dtype {item.get('dtype')!r}")
            raw = base64.b64decode(item["data"], validate=True)
            arr = np.frombuffer(raw, dtype="<f4")
            if arr.size != int(np.prod(shape)):
                raise ValueError(f"{arr.size} numbers for shape {shape}")
        except (KeyError, TypeError, ValueError) as e:
            raise EmbeddingError(f"{KIND_PARTS_KEY}[{key!r}] is damaged ({e})") from None
        out[str(key)] = torch.from_numpy(arr.reshape(shape).astype(np.float32, copy=True))
    return out
