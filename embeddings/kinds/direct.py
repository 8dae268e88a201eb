"""The direct-conditioning kind (experimental): the concept's vectors live in the text encoder's
OUTPUT space, the cross-attention context the UNet reads.

The prompt is encoded with the embedding's *carrier* vectors at its token slots (what the text
encoder reads there: the token embeddings it was made from, e.g. the init text's), and then the
learned vectors replace the encoder's outputs at those slots (`embeddings.prompt.PromptEncoder`).
Only the learned vectors get gradients; the text encoder runs without them, so a training step has
no text-encoder backward and costs less than a standard one. The words after the concept, and the
end and padding tokens the UNet also attends to, read the carrier, so they see the prompt as they
would with the init text.

SD 1.x / 2.x: the vectors replace the last hidden state (with clip skip: the normalised earlier
layer the pipeline uses). SDXL: each encoder's part of the context (CLIP-L's and CLIP-G's
penultimate hidden states, which the pipeline concatenates) is replaced by that key's vectors;
the pooled output stays the encoder's (it reads the carrier).

Optionally per layer (`direct_grouping`: the per-layer kind's groupings): one set per group of
cross-attention layers, routed by the same processors (`embeddings.kinds.routing`); every group's
outputs come from the one text-encoder pass, since the encoder's input is the same for all.

Start: the encoder's own outputs at the slots of the prompt that is the embedding alone (start
token, the carrier, end token), so there an untrained direct embedding conditions the UNet
exactly as the standard embedding it was made from. In a longer prompt the encoder's outputs at
those slots would also have read the words before them; a direct vector is the same in every prompt.

What it cannot do: it has no standard part (its vectors are not token embeddings), so it does not
load in A1111, ComfyUI or diffusers, export to .pt / diffusers / PNG is refused, and the density
regulariser (which pulls vectors towards token embeddings) does not apply.

Fields: `parts[key]` is [n, width] (one set for every layer) or [groups, n, width]; `vectors` is
the same, or the mean over groups (what norms and inspect show, never written as an embedding
other tools load). `kind_info`: `space`, `clip_skip` (the layer whose outputs the vectors sit among:
the start is encoded with it, training and generation use it; `at_clip_skip`),
`grouping` ("none" or a key of `routing.GROUPINGS`), `groups` (names; [] for "none") and
`carrier` (`encode_parts` of the carrier vectors, [n, width] per key). Files: `.safetensors` only
(`embeddings.formats.safetensors_format`).
"""

from __future__ import annotations

from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds.base import Kind, KindOption, decode_parts, encode_parts
from embeddings.kinds.per_layer import PER_LAYER
from embeddings.kinds.routing import GROUPINGS, LayerLayout, LayoutError, layer_layout

SPACE = "text-encoder output"
NONE = "none"
EXPERIMENTAL = ("loads only in this program (no standard part, so not in A1111, ComfyUI or diffusers; "
                "no .pt, diffusers or PNG export)")


class DirectKind(Kind):
    name = "direct"
    label = "Direct conditioning (experimental)"
    summary = ("experimental: vectors in the text encoder's output space, written straight into the UNet's context "
               "(no text-encoder backward: a step costs less than standard); loads only in this program")
    options = (
        KindOption("direct_grouping", "Layer groups (direct)", (NONE, *GROUPINGS), NONE,
                   "none: one set for every layer; " + "; ".join(f"{k}: {v}" for k, v in GROUPINGS.items())),
    )
    standard_part = False

    # ---- making and checking ----------------------------------------------------------------------
    def make(self, standard: Embedding, unet, *, model=None, direct_grouping: str = NONE, clip_skip: int = 1,
             **_options: str) -> Embedding:
        """Start at the text encoder's outputs (at `clip_skip`) for `standard` alone in a prompt (so it
        acts as `standard` there); `standard`'s vectors become the carrier. Needs `model` (its text encoders)."""
        if model is None:
            raise EmbeddingError(f"{self.label}: starting {standard.name!r} needs the base model's text encoder")
        if standard.kind != "standard":
            raise EmbeddingError(f"{self.label} starts from a standard embedding; {standard.name!r} is {standard.kind}")
        grouping = (direct_grouping or NONE).strip()
        groups: list[str] = []
        if grouping != NONE:
            try:
                groups = list(layer_layout(unet, grouping).groups)
            except LayoutError as e:
                raise EmbeddingError(str(e)) from None
        from embeddings.prompt import encoder_outputs  # the prompt module imports the kind registry

        clip_skip = max(1, int(clip_skip))
        out = encoder_outputs(model, standard.name, standard.vectors, clip_skip=clip_skip)
        parts = {k: v.unsqueeze(0).repeat(len(groups), 1, 1) if groups else v for k, v in out.items()}
        info = {"space": SPACE, "clip_skip": clip_skip, "grouping": grouping, "groups": groups,
                "carrier": encode_parts(standard.vectors)}
        emb = self.rebuild(Embedding(standard.name, out, standard.step, dict(standard.metadata), kind=self.name,
                                     kind_info=info), parts, step=standard.step, metadata=dict(standard.metadata))
        self.check(emb)
        return emb

    def check(self, emb: Embedding) -> None:
        info = emb.kind_info
        grouping, groups = info.get("grouping"), info.get("groups")
        if info.get("space") != SPACE:
            raise EmbeddingError(f"direct embedding {emb.name!r}: unknown space {info.get('space')!r}")
        if grouping != NONE and grouping not in GROUPINGS:
            raise EmbeddingError(f"direct embedding {emb.name!r}: unknown grouping {grouping!r}")
        if not isinstance(groups, list) or (grouping != NONE) != bool(groups):
            raise EmbeddingError(f"direct embedding {emb.name!r}: group names do not fit grouping {grouping!r}")
        carrier = self.encoder_inputs(emb)
        if set(emb.parts) != set(emb.vectors) or set(carrier) != set(emb.vectors):
            raise EmbeddingError(f"direct embedding {emb.name!r}: vectors for {sorted(emb.parts)}, carrier for "
                                 f"{sorted(carrier)}, expected both for {sorted(emb.vectors)}")
        for key, t in emb.parts.items():
            flat = tuple(emb.vectors[key].shape)
            want = (len(groups), *flat) if groups else flat
            if tuple(t.shape) != want or tuple(carrier[key].shape) != flat:
                raise EmbeddingError(f"direct embedding {emb.name!r}: {key} has shape {tuple(t.shape)} and carrier "
                                     f"{tuple(carrier[key].shape)}, expected {want} and {flat}")

    def layout(self, emb: Embedding, unet) -> LayerLayout | None:
        if emb.kind_info["grouping"] == NONE:
            return None
        return PER_LAYER.layout(emb, unet)  # the same groups, checked against this UNet the same way

    def clip_skip(self, emb: Embedding) -> int:
        return int(emb.kind_info.get("clip_skip", 1))

    def at_clip_skip(self, emb: Embedding, model, clip_skip: int) -> Embedding:
        """An untrained embedding restarts at the encoder's outputs of `clip_skip`'s layer (from its
        carrier, which is the standard embedding it was made from); a trained one cannot move."""
        clip_skip = max(1, int(clip_skip))
        if clip_skip == self.clip_skip(emb):
            return emb
        if emb.step > 0:
            raise EmbeddingError(
                f"direct embedding {emb.name!r} was trained at clip skip {self.clip_skip(emb)} (its vectors are that "
                f"layer's outputs); use it at clip skip {self.clip_skip(emb)}, or create a new one for clip skip "
                f"{clip_skip}")
        carrier = self.encoder_inputs(emb)
        standard = Embedding(emb.name, carrier, emb.step, dict(emb.metadata))
        return self.make(standard, model.unet, model=model, direct_grouping=emb.kind_info["grouping"],
                         clip_skip=clip_skip)

    # ---- training ----------------------------------------------------------------------------------
    def trainable(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in emb.parts.items()}

    def rebuild(self, emb: Embedding, tensors: dict[str, torch.Tensor], *, step: int,
                metadata: dict[str, Any]) -> Embedding:
        parts = {k: v.detach().cpu() for k, v in tensors.items()}
        return Embedding(emb.name, {k: v.mean(dim=0) if v.dim() == 3 else v for k, v in parts.items()}, step,
                         metadata, kind=self.name, parts=parts, kind_info=dict(emb.kind_info))

    # ---- conditioning -------------------------------------------------------------------------------
    def condition(self, emb: Embedding, layout: LayerLayout | None) -> dict[str, torch.Tensor]:
        if emb.kind_info["grouping"] == NONE:
            return emb.parts
        if layout is None:
            raise EmbeddingError(f"direct embedding {emb.name!r} has layer groups and needs layer routing on the UNet")
        return PER_LAYER.condition(emb, layout)

    def encoder_inputs(self, emb: Embedding) -> dict[str, torch.Tensor]:
        return decode_parts(emb.kind_info.get("carrier") or {})

    # ---- reporting ----------------------------------------------------------------------------------
    def describe(self, emb: Embedding) -> dict[str, Any]:
        info = emb.kind_info
        out: dict[str, Any] = {"kind": self.name, "experimental": EXPERIMENTAL, "space": info["space"],
                               "clip_skip": info.get("clip_skip", 1), "grouping": info["grouping"]}
        if info["groups"]:
            out["groups"] = list(info["groups"])
            out["group_norms"] = {k: [[round(float(x), 6) for x in row] for row in v.norm(dim=-1)]
                                  for k, v in emb.parts.items()}
        return out

    def export_note(self, emb: Embedding, fmt: str) -> str | None:
        if fmt == "safetensors":
            return "the file loads only in this program (a direct-conditioning embedding has no standard part)"
        return None  # every other format is refused (formats.save_embedding)


DIRECT = DirectKind()
