"""The per-layer kind (P+ / Extended Textual Inversion, arXiv 2303.09522): one set of vectors per group
of UNet cross-attention layers.

The prompt is encoded once per group with that group's vectors (all groups in one batched
text-encoder pass, `embeddings.prompt`), and each cross-attention layer attends to its own
group's encoding (`embeddings.kinds.routing`). Same tokens in the prompt as a standard embedding
of n vectors; groups × more trainable numbers; a training step pays a text-encoder pass over
groups × the batch.

`Embedding.parts[key]` is [groups, n, width]; `kind_info` holds `grouping` (a key of
`routing.GROUPINGS`), `groups` (group names, the UNet's module paths or down/mid/up) and
`standard` ("mean", or a group name): how the standard part in `Embedding.vectors` is made
from the groups, so other tools get the mean over layers by default or one chosen group.

Style mixing (`style_mix`): embedding A on some layers and B on the others, e.g. an object's
shape on the coarse (inner, low-resolution) layers and a style's colour on the fine (outer) ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds.base import Kind, KindOption
from embeddings.kinds.routing import (
    DEFAULT_GROUPING,
    GROUPINGS,
    LayerLayout,
    LayoutError,
    _group_name,
    layer_layout,
)

MEAN = "mean"


class PerLayerKind(Kind):
    name = "per-layer"
    label = "Per-layer (P+ / XTI)"
    summary = ("one set of vectors per group of UNet cross-attention layers (P+/XTI): more precise, style "
               "mixing; groups x the vectors to train, a text-encoder pass per group each step")
    options = (
        KindOption("grouping", "Layer groups", tuple(GROUPINGS), DEFAULT_GROUPING,
                   "; ".join(f"{k}: {v}" for k, v in GROUPINGS.items())),
        KindOption("standard_part", "Standard part (what other tools load)", (), MEAN,
                   "'mean' over the layer groups, or one group's name (e.g. mid)"),
    )

    # ---- making and checking ----------------------------------------------------------------------
    def make(self, standard: Embedding, unet, *, grouping: str = DEFAULT_GROUPING, standard_part: str = MEAN,
             **_options: str) -> Embedding:
        """Every group starts at `standard`'s vectors (so before training it acts exactly like it)."""
        layout = _layout(unet, grouping)
        standard_part = (standard_part or MEAN).strip()
        if standard_part != MEAN and standard_part not in layout.groups:
            raise EmbeddingError(f"standard part {standard_part!r}: use 'mean' or one of the {grouping} groups "
                                 f"({', '.join(layout.groups[:6])}{' ...' if layout.size > 6 else ''})")
        parts = {k: v.unsqueeze(0).repeat(layout.size, 1, 1) for k, v in standard.vectors.items()}
        info = {"grouping": grouping, "groups": list(layout.groups), "standard": standard_part}
        return self.from_parts(standard, parts, info)

    def standard_part_of(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return standard_part_of(emb)

    def check(self, emb: Embedding) -> None:
        info = emb.kind_info
        grouping, groups, std = info.get("grouping"), info.get("groups"), info.get("standard", MEAN)
        if grouping not in GROUPINGS:
            raise EmbeddingError(f"per-layer embedding {emb.name!r}: unknown grouping {grouping!r}")
        if not isinstance(groups, list) or not groups or not all(isinstance(g, str) for g in groups):
            raise EmbeddingError(f"per-layer embedding {emb.name!r}: no group names")
        if std != MEAN and std not in groups:
            raise EmbeddingError(f"per-layer embedding {emb.name!r}: standard part {std!r} is neither "
                                 f"'mean' nor a group")
        if set(emb.parts) != set(emb.vectors):
            raise EmbeddingError(f"per-layer embedding {emb.name!r}: per-layer tensors for {sorted(emb.parts)}, "
                                 f"standard part for {sorted(emb.vectors)}")
        for key, t in emb.parts.items():
            want = (len(groups), *emb.vectors[key].shape)
            if tuple(t.shape) != want:
                raise EmbeddingError(f"per-layer embedding {emb.name!r}: {key} has shape {tuple(t.shape)}, "
                                     f"expected {want} (groups, vectors, width)")

    def layout(self, emb: Embedding, unet) -> LayerLayout:
        layout = _layout(unet, emb.kind_info["grouping"])
        if list(layout.groups) != list(emb.kind_info["groups"]):
            mine = emb.kind_info["groups"]
            raise EmbeddingError(
                f"{emb.kind} embedding {emb.name!r} was made for a UNet with {len(mine)} {emb.kind_info['grouping']} "
                f"group(s) ({', '.join(mine[:3])}{' ...' if len(mine) > 3 else ''}); this model has {layout.size} "
                f"({', '.join(layout.groups[:3])}{' ...' if layout.size > 3 else ''})")
        return layout

    # ---- training ----------------------------------------------------------------------------------
    def trainable(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in emb.parts.items()}

    def rebuild(self, emb: Embedding, tensors: dict[str, torch.Tensor], *, step: int,
                metadata: dict[str, Any]) -> Embedding:
        parts = {k: v.detach().cpu() for k, v in tensors.items()}
        out = Embedding(emb.name, {k: v[0] for k, v in parts.items()}, step, metadata, kind=self.name,
                        parts=parts, kind_info=dict(emb.kind_info))
        out.vectors = standard_part_of(out)
        return out

    # ---- conditioning -------------------------------------------------------------------------------
    def condition(self, emb: Embedding, layout: LayerLayout | None) -> dict[str, torch.Tensor]:
        """The groups of `emb` laid out on `layout`'s groups: the same grouping passes straight
        through; a finer one (e.g. `layer` for a `block` embedding) repeats each group's vectors
        on its layers."""
        idx = group_index(emb, layout)
        return emb.parts if idx is None else {k: v[idx] for k, v in emb.parts.items()}

    # ---- reporting ----------------------------------------------------------------------------------
    def describe(self, emb: Embedding) -> dict[str, Any]:
        return {
            "kind": self.name,
            "grouping": emb.kind_info["grouping"],
            "groups": list(emb.kind_info["groups"]),
            "standard_part": emb.kind_info.get("standard", MEAN),
            "group_norms": {k: [[round(float(x), 6) for x in row] for row in v.norm(dim=-1)]
                            for k, v in emb.parts.items()},
        }

    def export_note(self, emb: Embedding, fmt: str) -> str | None:
        if fmt == "safetensors":
            return None
        if fmt == "png":
            return ("the PNG carries the full per-layer embedding in its info chunk (read here); other tools and "
                    "the pixel data see the standard part")
        std = emb.kind_info.get("standard", MEAN)
        how = f"the mean over {len(emb.kind_info['groups'])} layer groups" if std == MEAN else f"group {std}"
        return f"{fmt} holds one set of vectors: wrote the standard part ({how}); the per-layer sets are not in it"


def group_index(emb: Embedding, layout: LayerLayout | None) -> torch.Tensor | None:
    """For each group of `layout`, which of `emb`'s groups (`kind_info` grouping and groups) it takes;
    None when they are the same groups. A finer layout repeats a group on each of its layers."""
    if layout is None:
        raise EmbeddingError(f"{emb.kind} embedding {emb.name!r} needs layer routing on the UNet")
    grouping, mine = emb.kind_info["grouping"], emb.kind_info["groups"]
    if layout.grouping == grouping and list(layout.groups) == mine:
        return None
    index = []
    for g in range(layout.size):
        own = {_group_name(layer, grouping) for layer in layout.layers_in(g)}
        if len(own) != 1 or next(iter(own)) not in mine:
            raise EmbeddingError(f"{emb.kind} embedding {emb.name!r}: its {grouping} groups "
                                 f"do not map onto the layer group {layout.groups[g]}")
        index.append(mine.index(next(iter(own))))
    return torch.tensor(index)


def standard_part_of(emb: Embedding) -> dict[str, torch.Tensor]:
    """The standard part of a per-layer embedding: the mean over groups, or the chosen group."""
    std = emb.kind_info.get("standard", MEAN)
    if std == MEAN:
        return {k: v.mean(dim=0) for k, v in emb.parts.items()}
    g = emb.kind_info["groups"].index(std)
    return {k: v[g].clone() for k, v in emb.parts.items()}


def _layout(unet, grouping: str) -> LayerLayout:
    try:
        return layer_layout(unet, grouping)
    except LayoutError as e:
        raise EmbeddingError(str(e)) from None


def coarse_mask(layers: int, outer: int) -> list[bool]:
    """Which of `layers` layers (call order: down, mid, up) are "inner": all but `outer` at each end.

    Call order runs from the fine down layers through the coarse middle to the fine up layers,
    so the inner range is the coarse (low-resolution) part: shape and layout; the outer layers
    carry colour and texture. `outer` 0 makes every layer inner."""
    return [outer <= i < layers - outer for i in range(layers)]


def style_mix(inner: Embedding, outer: Embedding, unet, inner_layers: Sequence[bool], *,
              name: str | None = None) -> Embedding:
    """A per-layer embedding (grouping `layer`) with `inner`'s vectors on the layers marked True in
    `inner_layers` (one flag per cross-attention layer, call order) and `outer`'s on the rest.

    Either may be standard or per-layer; both need the same vector count and widths. The result
    is named `name` (default: `inner`'s name, so a prompt written for the object uses the mix)."""
    from embeddings.kinds import kind_of  # the registry imports this module

    layout = _layout(unet, "layer")
    if len(inner_layers) != layout.size:
        raise EmbeddingError(f"style mixing needs one flag per cross-attention layer ({layout.size}), "
                             f"got {len(inner_layers)}")
    for emb in (inner, outer):
        if kind_of(emb).encoder_inputs(emb) is not None:
            raise EmbeddingError(f"style mixing mixes token embeddings; {emb.name!r} is a {kind_of(emb).label} "
                                 "embedding (text-encoder outputs)")
    if inner.widths != outer.widths or inner.num_vectors != outer.num_vectors:
        raise EmbeddingError(f"cannot mix {inner.name!r} ({inner.num_vectors} vectors, {inner.widths}) with "
                             f"{outer.name!r} ({outer.num_vectors} vectors, {outer.widths}): they must match")
    mask = torch.tensor(list(inner_layers), dtype=torch.bool)[:, None, None]

    def per_layer(emb: Embedding) -> dict[str, torch.Tensor]:
        kind = kind_of(emb)
        cond = kind.condition(emb, layout if kind.layout(emb, unet) is not None else None)
        return {k: v if v.dim() == 3 else v.unsqueeze(0).expand(layout.size, -1, -1) for k, v in cond.items()}

    a, b = per_layer(inner), per_layer(outer)
    parts = {k: torch.where(mask, a[k], b[k]).clone() for k in a}
    meta = {"style_mix": {"inner": inner.name, "outer": outer.name,
                          "inner_layers": [i for i, f in enumerate(inner_layers) if f]}}
    emb = Embedding(name or inner.name, {k: v[0] for k, v in parts.items()}, 0, meta, kind=PER_LAYER.name,
                    parts=parts, kind_info={"grouping": "layer", "groups": list(layout.groups), "standard": MEAN})
    emb.vectors = standard_part_of(emb)
    return emb


PER_LAYER = PerLayerKind()
