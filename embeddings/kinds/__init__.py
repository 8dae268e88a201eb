"""Embedding kinds: how an embedding's learned vectors condition the UNet.

- `standard`: one set of vectors on every cross-attention layer (plain textual inversion);
- `per-layer`: one set per group of cross-attention layers (P+ / XTI), routed by attention processors;
- `per-timestep`: anchor sets blended by the sample's denoising timestep (`Kind.timed`);
- `direct` (experimental): vectors in the text encoder's output space, written over its outputs.

Every caller asks the registry (`kind_of(emb)`, `KINDS`) instead of testing which kind it holds;
a new kind is one module with a `Kind` subclass, added to `KINDS`. `conditioning_layout` decides
the routing for a set of embeddings used together in one prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds.base import (
    KIND_FILE_KEYS,
    KIND_INFO_KEY,
    KIND_KEY,
    KIND_PARTS_KEY,
    Kind,
    KindOption,
    decode_parts,
    encode_parts,
)
from embeddings.kinds.direct import DIRECT
from embeddings.kinds.per_layer import PER_LAYER, coarse_mask, style_mix
from embeddings.kinds.per_timestep import PER_TIMESTEP
from embeddings.kinds.routing import LayerLayout, install_routing, layer_layout, routed
from embeddings.kinds.standard import STANDARD

KINDS: dict[str, Kind] = {k.name: k for k in (STANDARD, PER_LAYER, PER_TIMESTEP, DIRECT)}


def get_kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise EmbeddingError(f"unknown embedding kind {name!r}: this program knows {', '.join(KINDS)}") from None


def kind_of(emb: Embedding) -> Kind:
    return get_kind(emb.kind)


def conditioning_layout(unet, embeddings: Iterable[Embedding]) -> LayerLayout | None:
    """The routing for these embeddings used together: None when none needs one; their own
    layout when they agree; else every layer on its own (each kind can lay itself out on it)."""
    layouts = [lay for e in embeddings if (lay := kind_of(e).layout(e, unet)) is not None]
    if not layouts:
        return None
    if all(lay == layouts[0] for lay in layouts):
        return layouts[0]
    return layer_layout(unet, "layer")


def kind_fields(emb: Embedding) -> dict[str, Any]:
    """What a file stores about a non-standard kind beside the standard part (nothing for standard)."""
    if emb.kind == STANDARD.name:
        return {}
    return {KIND_KEY: emb.kind, KIND_INFO_KEY: emb.kind_info, KIND_PARTS_KEY: encode_parts(emb.parts)}


def with_kind_fields(emb: Embedding, fields: dict[str, Any]) -> Embedding:
    """`emb` (read as a standard embedding) turned into the kind `fields` describe, checked.

    The keys of `kind_fields` are removed from `fields` (a file's metadata), so they never reach
    `metadata`; a file without them is standard."""
    kind_name = fields.pop(KIND_KEY, None)
    info = fields.pop(KIND_INFO_KEY, None)
    parts = fields.pop(KIND_PARTS_KEY, None)
    if kind_name in (None, STANDARD.name):
        return emb
    kind = get_kind(str(kind_name))
    if not isinstance(info, dict) or parts is None:
        raise EmbeddingError(f"a {kind_name} embedding without its {KIND_INFO_KEY} / {KIND_PARTS_KEY}")
    emb.kind, emb.kind_info, emb.parts = kind.name, info, decode_parts(parts)
    kind.check(emb)
    return emb


def without_standard_part(name: str, fields: dict[str, Any]) -> Embedding | None:
    """The embedding in a file of a kind with no standard part (direct), built from the kind fields
    alone (they are removed from `fields`); None when `fields` name no such kind."""
    kind_name = fields.get(KIND_KEY)
    if kind_name in (None, STANDARD.name) or get_kind(str(kind_name)).standard_part:
        return None
    kind = get_kind(str(fields.pop(KIND_KEY)))
    info, parts = fields.pop(KIND_INFO_KEY, None), fields.pop(KIND_PARTS_KEY, None)
    if not isinstance(info, dict) or parts is None:
        raise EmbeddingError(f"a {kind_name} embedding without its {KIND_INFO_KEY} / {KIND_PARTS_KEY}")
    tensors = decode_parts(parts)
    if not tensors:
        raise EmbeddingError(f"a {kind_name} embedding without vectors")
    template = Embedding(name, {k: v.mean(dim=0) if v.dim() == 3 else v for k, v in tensors.items()},
                         kind=kind.name, kind_info=info)
    emb = kind.rebuild(template, tensors, step=0, metadata={})
    kind.check(emb)
    return emb


__all__ = ["DIRECT", "KINDS", "KIND_FILE_KEYS", "Kind", "KindOption", "LayerLayout", "PER_LAYER", "PER_TIMESTEP", "STANDARD",
           "coarse_mask", "conditioning_layout", "get_kind", "install_routing", "kind_fields", "kind_of", "layer_layout", "routed",
           "style_mix", "with_kind_fields", "without_standard_part"]
