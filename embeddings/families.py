"""Stable Diffusion model families as an embedding sees them: text encoders, their widths, pad tokens.

An embedding is a set of vectors per text encoder, so the families' text encoders are the one
fact that decides which model a file fits. Both `embeddings/` (which family a file fits, which
encoder a lone tensor belongs to) and `models/` (which family a loaded model is, which tokenizers
it needs) read them here, so the two can never disagree. Nothing in this module imports torch.

Encoder keys double as the tensor names in SDXL embedding files (the kohya / A1111 layout).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

CLIP_L = "clip_l"  # OpenAI CLIP ViT-L/14 text tower: SD 1.x, and SDXL's first encoder
CLIP_H = "clip_h"  # OpenCLIP ViT-H/14: SD 2.x
CLIP_G = "clip_g"  # OpenCLIP ViT-bigG/14: SDXL's second encoder

# Pad tokens. They matter: the UNet cross-attends to pad positions, so a model trained with
# OpenCLIP's "!" padding must be prompted with it.
EOS_PAD = "<|endoftext|>"
BANG_PAD = "!"


@dataclass(frozen=True)
class TextEncoder:
    """One text-encoder kind: its key in `Embedding.vectors`, token-embedding width and pad token.

    `open_clip`: trained by OpenCLIP; single-file (LDM) checkpoints keep such an encoder in
    open_clip's own layout (fused q/k/v), the others in Hugging Face CLIP's layout.
    """

    key: str
    width: int
    pad_token: str
    open_clip: bool


ENCODERS: dict[str, TextEncoder] = {
    CLIP_L: TextEncoder(CLIP_L, 768, EOS_PAD, open_clip=False),
    CLIP_H: TextEncoder(CLIP_H, 1024, BANG_PAD, open_clip=True),
    CLIP_G: TextEncoder(CLIP_G, 1280, BANG_PAD, open_clip=True),
}


@dataclass(frozen=True)
class Family:
    """A published model family: its text encoders, in the order the model uses them."""

    name: str
    label: str
    encoder_keys: tuple[str, ...]
    native_size: int = 512  # the image side the family was trained at: the default for training and previews

    @property
    def widths(self) -> dict[str, int]:
        return {k: ENCODERS[k].width for k in self.encoder_keys}

    @property
    def pad_tokens(self) -> tuple[str, ...]:
        return tuple(ENCODERS[k].pad_token for k in self.encoder_keys)


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", "SD 1.x", (CLIP_L,), 512),
    # 768 is SD 2.x-v's size (the common 2.x checkpoints); the 512 base is told by its own config
    "sd2": Family("sd2", "SD 2.x", (CLIP_H,), 768),
    "sdxl": Family("sdxl", "SDXL", (CLIP_L, CLIP_G), 1024),
}
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)


@dataclass(frozen=True)
class BuiltinModel:
    """A built-in random-weight model: a family's layout (encoder keys, pad tokens) at toy widths."""

    name: str
    family: str
    widths: dict[str, int]
    native_size: int = 64  # built-ins are tiny: 64 px images (8x8 latents)
    label: str = ""  # what the model list says about a built-in with trained weights (empty: random)

    @property
    def random_weights(self) -> bool:
        return not self.label


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "tiny": BuiltinModel("tiny", "sd1", {CLIP_L: 32}),
    "tiny-sdxl": BuiltinModel("tiny-sdxl", "sdxl", {CLIP_L: 32, CLIP_G: 64}),
    # SD 2.x v-prediction at toy width; 48 is no other model's width, so a lone 48-wide tensor is CLIP-H.
    "tiny-sd2v": BuiltinModel("tiny-sd2v", "sd2", {CLIP_H: 48}),
    # trained on a world of shapes and colours (models/toy), so embeddings visibly learn on it
    "toy": BuiltinModel("toy", "sd1", {CLIP_L: 64}, label="built-in toy model: shapes and colours"),
}


def native_size(name: str | None) -> int | None:
    """The native image side of a built-in model or a family (its name), None when unknown."""
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name].native_size
    return FAMILIES[name].native_size if name in FAMILIES else None


def family_for_widths(widths: Mapping[str, int]) -> str | None:
    """The published family whose encoders have exactly these widths, or None (e.g. a tiny model's)."""
    for family in FAMILIES.values():
        if family.widths == dict(widths):
            return family.name
    return None


def fitting_models(widths: Mapping[str, int]) -> list[str]:
    """Every family and built-in model an embedding of these widths can be used with."""
    fits = [f.name for f in FAMILIES.values() if f.widths == dict(widths)]
    return fits + [b.name for b in BUILTIN_MODELS.values() if b.widths == dict(widths)]


def known_widths() -> str:
    """The widths of every known model, for a message when a file fits none of them."""
    models = [(f.name, f.widths) for f in FAMILIES.values()] + [(b.name, b.widths) for b in BUILTIN_MODELS.values()]
    return ", ".join(f"{name} {'+'.join(str(w) for w in widths.values())}" for name, widths in models)


def family_for_text_encoders(first_width: int, count: int) -> str:
    """The family a model with `count` text encoders, the first `first_width` wide, is loaded as.

    Two encoders are SDXL. One encoder of SD 2.x's width is SD 2.x, and so is one of the toy width
    of a one-encoder built-in (tiny-sd2v's 48 is SD 2.x, tiny's 32 SD 1.x); any other width is the
    SD 1.x layout: published families are told apart by width, and a one-encoder model at any other
    width can only be a CLIP-L variant.
    """
    if count >= 2:
        return "sdxl"
    if first_width == ENCODERS[CLIP_H].width:
        return "sd2"
    for builtin in BUILTIN_MODELS.values():
        if list(builtin.widths.values()) == [first_width]:
            return builtin.family
    return "sd1"


def single_encoder_key(width: int) -> str:
    """The encoder key for a one-tensor embedding file, which names no encoder: the width decides."""
    return FAMILIES[family_for_text_encoders(width, 1)].encoder_keys[0]
