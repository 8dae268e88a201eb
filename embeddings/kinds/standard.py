"""The standard kind: one set of vectors, the same on every cross-attention layer (plain TI)."""

from __future__ import annotations

from typing import Any

import torch

from embeddings.embedding import Embedding
from embeddings.kinds.base import Kind
from embeddings.kinds.routing import LayerLayout


class StandardKind(Kind):
    name = "standard"
    label = "Standard"
    summary = "one set of vectors for every UNet layer (plain textual inversion); loads in every tool"

    def make(self, standard: Embedding, unet, **options: str) -> Embedding:
        return standard.copy(kind=self.name, parts={}, kind_info={})

    def trainable(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in emb.vectors.items()}

    def rebuild(self, emb: Embedding, tensors: dict[str, torch.Tensor], *, step: int,
                metadata: dict[str, Any]) -> Embedding:
        return Embedding(emb.name, {k: v.detach().cpu() for k, v in tensors.items()}, step, metadata)

    def condition(self, emb: Embedding, layout: LayerLayout | None) -> dict[str, torch.Tensor]:
        return emb.vectors


STANDARD = StandardKind()
