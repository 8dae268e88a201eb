"""The per-timestep kind: different vectors for different noise levels.

K anchor sets of vectors (K >= 2), each pinned to a denoising timestep (by default evenly spaced
from t = 0, the clean end, to t = T = 999, pure noise). The vectors used at timestep t are the
piecewise-linear blend of the two anchors around t (`blend`); outside the anchors the nearest
one. Same tokens in the prompt as a standard embedding of n vectors; K x the trainable numbers.

The blend is of the *vectors*, per sample, before the text encoder: a training batch whose
samples sit at different timesteps still takes ONE text-encoder pass (the prompt encoder splices
each row's own vectors), so a step costs about what a standard one does. At generation time the
conditioning changes per denoising step: the encodings of the schedule's timesteps are made
once, in one batched pass, and a stock pipeline's step-end callback switches `prompt_embeds`
before each step (`embeddings.prompt.StepConditioning`).

`Embedding.parts[key]` is [K, n, width]; `kind_info` holds `timesteps` (the anchors' timesteps,
increasing) and `standard` (the timestep whose blend is the standard part in `Embedding.vectors`,
by default mid-schedule, T / 2): what A1111, ComfyUI and diffusers load from the file.

Per-layer x per-timestep (option `anchor_grouping`: block, layer or stage): each anchor holds one
set per group of cross-attention layers, parts [K, groups, n, width], blended per row to
[B, groups, n, width] and routed as the per-layer kind routes (`kind_info` adds its `grouping` and
`groups`; the standard part is the mean over groups of the blend). It costs what per-layer costs:
the prompt encoder takes one row per group and sample, in one pass; generation encodes
groups x steps rows once.
"""

from __future__ import annotations

from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds.base import Kind, KindOption
from embeddings.kinds.per_layer import PER_LAYER, _layout, group_index
from embeddings.kinds.routing import GROUPINGS, LayerLayout

LAST_TIMESTEP = 999.0  # SD 1.x, 2.x and SDXL all train on 1000 timesteps, 0 ... 999
MID = "mid"
DEFAULT_ANCHORS = 2
MAX_ANCHORS = 10
NO_GROUPS = "none"  # one set per anchor for every layer


def anchor_timesteps(count: int, last: float = LAST_TIMESTEP) -> list[float]:
    """`count` anchors evenly spaced over [0, last] (both ends included)."""
    if count < 2:
        raise EmbeddingError(f"a per-timestep embedding needs at least 2 anchors, not {count}")
    return [last * k / (count - 1) for k in range(count)]


def blend(anchors: torch.Tensor, at: list[float], timesteps: torch.Tensor) -> torch.Tensor:
    """Per timestep, the piecewise-linear blend of the two anchors around it: [K, ...] -> [B, ...].

    `at` are the anchors' timesteps (increasing); a timestep outside them takes the nearest anchor.
    `torch.lerp` makes an anchor's own timestep give exactly that anchor and equal anchors give
    exactly their value at every t (no rounding: a + w * 0), and only the two neighbours are
    read, so gradients reach just them, in proportion to their weights."""
    if anchors.shape[0] != len(at):
        raise EmbeddingError(f"{anchors.shape[0]} anchor sets for {len(at)} anchor timesteps")
    ts = torch.tensor(at, dtype=torch.float64)
    t = timesteps.detach().to("cpu", torch.float64).reshape(-1).clamp(ts[0], ts[-1])
    hi = torch.searchsorted(ts, t).clamp(1, len(at) - 1)
    lo = hi - 1
    weight = ((t - ts[lo]) / (ts[hi] - ts[lo])).to(anchors.dtype)
    lo, hi, weight = lo.to(anchors.device), hi.to(anchors.device), weight.to(anchors.device)
    return torch.lerp(anchors[lo], anchors[hi], weight.view(-1, *([1] * (anchors.dim() - 1))))


class PerTimestepKind(Kind):
    name = "per-timestep"
    label = "Per-timestep"
    summary = ("anchor sets of vectors blended by the denoising timestep (e.g. one for coarse layout at high "
               "noise, one for detail at low noise): anchors x the vectors to train, a step costs about a standard one")
    timed = True
    options = (
        KindOption("anchors", "Anchors", tuple(str(k) for k in range(2, MAX_ANCHORS + 1)), str(DEFAULT_ANCHORS),
                   "anchor sets, evenly spaced from t=0 (clean) to t=999 (noise); the vectors at t blend the two "
                   "nearest"),
        KindOption("standard_at", "Standard part at timestep (what other tools load)", (), MID,
                   "'mid' (t=499.5) or a timestep 0-999: the blend there is written for other tools"),
        KindOption("anchor_grouping", "Layer groups per anchor (per-layer x per-timestep)", (NO_GROUPS, *GROUPINGS),
                   NO_GROUPS, "none: each anchor is one set for every layer; block / layer / stage: each anchor "
                              "holds one set per layer group, as the per-layer kind (costs what per-layer costs)"),
    )

    # ---- making and checking ----------------------------------------------------------------------
    def make(self, standard: Embedding, unet, *, anchors: str | int = DEFAULT_ANCHORS, standard_at: str = MID,
             anchor_grouping: str = NO_GROUPS, **_options: str) -> Embedding:
        """Every anchor (and layer group) starts at `standard`'s vectors (so before training it acts
        exactly like it)."""
        try:
            count = int(str(anchors).strip())
        except ValueError:
            raise EmbeddingError(f"anchors {anchors!r}: give a whole number, 2 to {MAX_ANCHORS}") from None
        if not 2 <= count <= MAX_ANCHORS:
            raise EmbeddingError(f"anchors {count}: a per-timestep embedding takes 2 to {MAX_ANCHORS} anchor sets")
        at = anchor_timesteps(count)
        info: dict[str, Any] = {"timesteps": at, "standard": _standard_timestep(standard_at, at)}
        sets: tuple[int, ...] = (count,)
        if (anchor_grouping or NO_GROUPS) != NO_GROUPS:
            layout = _layout(unet, anchor_grouping)
            info.update(grouping=anchor_grouping, groups=list(layout.groups))
            sets = (count, layout.size)
        parts = {k: v.expand(*sets, *v.shape).clone() for k, v in standard.vectors.items()}
        return self.from_parts(standard, parts, info)

    def standard_part_of(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return standard_part_of(emb)

    def check(self, emb: Embedding) -> None:
        at, std = emb.kind_info.get("timesteps"), emb.kind_info.get("standard")
        if (not isinstance(at, list) or len(at) < 2 or not all(isinstance(t, int | float) for t in at)
                or any(b <= a for a, b in zip(at, at[1:], strict=False))):
            raise EmbeddingError(f"per-timestep embedding {emb.name!r}: anchor timesteps {at!r} are not 2 or more "
                                 f"increasing numbers")
        if not isinstance(std, int | float) or isinstance(std, bool):
            raise EmbeddingError(f"per-timestep embedding {emb.name!r}: standard part timestep {std!r} is not a number")
        if set(emb.parts) != set(emb.vectors):
            raise EmbeddingError(f"per-timestep embedding {emb.name!r}: anchor tensors for {sorted(emb.parts)}, "
                                 f"standard part for {sorted(emb.vectors)}")
        groups = emb.kind_info.get("groups")
        if "grouping" in emb.kind_info and (emb.kind_info["grouping"] not in GROUPINGS or not isinstance(groups, list)
                                            or not groups or not all(isinstance(g, str) for g in groups)):
            raise EmbeddingError(f"per-timestep embedding {emb.name!r}: layer grouping "
                                 f"{emb.kind_info['grouping']!r} with groups {groups!r}")
        for key, t in emb.parts.items():
            want = (len(at), *([len(groups)] if _grouped(emb) else []), *emb.vectors[key].shape)
            if tuple(t.shape) != want:
                raise EmbeddingError(f"per-timestep embedding {emb.name!r}: {key} has shape {tuple(t.shape)}, "
                                     f"expected {want} (anchors, {'groups, ' if _grouped(emb) else ''}vectors, width)")

    def layout(self, emb: Embedding, unet) -> LayerLayout | None:
        return PER_LAYER.layout(emb, unet) if _grouped(emb) else None

    # ---- training ----------------------------------------------------------------------------------
    def trainable(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in emb.parts.items()}

    def rebuild(self, emb: Embedding, tensors: dict[str, torch.Tensor], *, step: int,
                metadata: dict[str, Any]) -> Embedding:
        parts = {k: v.detach().cpu() for k, v in tensors.items()}
        out = Embedding(emb.name, {k: v.reshape(-1, *v.shape[-2:])[0] for k, v in parts.items()}, step, metadata,
                        kind=self.name, parts=parts, kind_info=dict(emb.kind_info))
        out.vectors = standard_part_of(out)
        return out

    def live_at(self, emb: Embedding, tensors: dict[str, torch.Tensor],
                timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        at = emb.kind_info["timesteps"]
        return {k: blend(v, at, timesteps) if _grouped(emb) else blend(v, at, timesteps).unsqueeze(1)
                for k, v in tensors.items()}

    # ---- conditioning -------------------------------------------------------------------------------
    def condition(self, emb: Embedding, layout: LayerLayout | None) -> dict[str, torch.Tensor]:
        """Without timesteps (e.g. a style mix): the blend at the standard part's timestep (per layer
        group on `layout` when the anchors have groups)."""
        if not _grouped(emb):
            return emb.vectors
        t = torch.tensor([float(emb.kind_info["standard"])])
        per_group = {k: blend(v, emb.kind_info["timesteps"], t)[0] for k, v in emb.parts.items()}
        idx = group_index(emb, layout)
        return per_group if idx is None else {k: v[idx] for k, v in per_group.items()}

    def condition_at(self, emb: Embedding, layout: LayerLayout | None,
                     timesteps: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = self.live_at(emb, emb.parts, timesteps)
        if not _grouped(emb):
            return rows
        idx = group_index(emb, layout)
        return rows if idx is None else {k: v[:, idx] for k, v in rows.items()}

    def norms(self, tensors: dict[str, torch.Tensor]) -> dict[str, list]:
        """Per anchor (and layer group: anchor-major rows) the norm of each vector."""
        out = {}
        for k, v in tensors.items():
            n = v.detach().float().norm(dim=-1)
            out[k] = (n.reshape(-1, n.shape[-1]) if n.dim() > 2 else n).cpu().tolist()
        return out

    # ---- reporting ----------------------------------------------------------------------------------
    def describe(self, emb: Embedding) -> dict[str, Any]:
        out = {
            "kind": self.name,
            "anchors": [round(float(t), 3) for t in emb.kind_info["timesteps"]],
            "standard_at": float(emb.kind_info["standard"]),
            "anchor_norms": {k: [[round(float(x), 6) for x in row] for row in rows]
                             for k, rows in self.norms(emb.parts).items()},
        }
        if _grouped(emb):
            out.update(grouping=emb.kind_info["grouping"], groups=list(emb.kind_info["groups"]))
        return out

    def export_note(self, emb: Embedding, fmt: str) -> str | None:
        if fmt == "safetensors":
            return None
        if fmt == "png":
            return ("the PNG carries the full per-timestep embedding in its info chunk (read here); other tools and "
                    "the pixel data see the standard part")
        return (f"{fmt} holds one set of vectors: wrote the standard part (the blend at timestep "
                f"{float(emb.kind_info['standard']):g}); the {len(emb.kind_info['timesteps'])} anchor sets are not in it")


def standard_part_of(emb: Embedding) -> dict[str, torch.Tensor]:
    """The standard part of a per-timestep embedding: the blend at `kind_info["standard"]` (with layer
    groups, its mean over the groups)."""
    t = torch.tensor([float(emb.kind_info["standard"])])
    out = {k: blend(v, emb.kind_info["timesteps"], t)[0] for k, v in emb.parts.items()}
    return {k: (v.mean(dim=0) if v.dim() == 3 else v).clone() for k, v in out.items()}


def _grouped(emb: Embedding) -> bool:
    """Per-layer x per-timestep: every anchor holds one set per layer group."""
    return "grouping" in emb.kind_info


def _standard_timestep(text: str | float, at: list[float]) -> float:
    """'mid' -> halfway between the first and last anchor; else a timestep within the anchors."""
    text = str(text if text is not None else MID).strip().lower() or MID
    if text == MID:
        return (at[0] + at[-1]) / 2
    try:
        t = float(text)
    except ValueError:
        raise EmbeddingError(f"standard part at {text!r}: use 'mid' or a timestep {at[0]:g}-{at[-1]:g}") from None
    if not at[0] <= t <= at[-1]:
        raise EmbeddingError(f"standard part at {t:g}: the timestep must be within {at[0]:g}-{at[-1]:g}")
    return t


PER_TIMESTEP = PerTimestepKind()
