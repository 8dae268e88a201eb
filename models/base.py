"""`BaseModel`: the loaded parts of a Stable Diffusion model that textual inversion needs.

`pipeline()` imports diffusers when called: it takes seconds to import, and every command line
call imports this module (for `ModelError`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

RANDOM_WEIGHTS_NOTE = "random weights, for trying the workflow"  # what the built-in tiny models are for


class ModelError(RuntimeError):
    """A base model that cannot be found or loaded. The message says what to do."""


@dataclass
class BaseModel:
    """Tokenizers and text encoders in encoder order (`encoder_keys`), plus UNet, VAE, scheduler.

    `encoder_keys` are the `Embedding.vectors` keys: ("clip_l",) for SD 1.x and the tiny model,
    ("clip_h",) for SD 2.x, ("clip_l", "clip_g") for SDXL.
    """

    name: str
    source: str  # "builtin", "diffusers", "single-file" or "hub"
    location: str  # path or hub id
    family: str  # "sd1", "sd2" or "sdxl"
    encoder_keys: tuple[str, ...]
    tokenizers: list[Any]
    text_encoders: list[Any]
    unet: Any
    vae: Any
    scheduler: Any  # the inference scheduler the model ships with
    prediction_type: str = "epsilon"
    short_hash: str | None = None
    random_weights: bool = False  # the built-in tiny models: for trying the workflow only
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def widths(self) -> dict[str, int]:
        return {
            key: int(te.get_input_embeddings().weight.shape[1])
            for key, te in zip(self.encoder_keys, self.text_encoders, strict=True)
        }

    @property
    def label(self) -> str:
        tag = f" ({RANDOM_WEIGHTS_NOTE})" if self.random_weights else ""
        return f"{self.name} [{self.family}]{tag}"

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def freeze(self) -> "BaseModel":
        """Only embedding vectors are ever trained: no weight gradients anywhere."""
        for module in (*self.text_encoders, self.unet, self.vae):
            module.requires_grad_(False)
            module.eval()
        return self

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "BaseModel":
        for module in (*self.text_encoders, self.unet, self.vae):
            module.to(device=device, dtype=dtype)
        return self

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "location": self.location,
            "family": self.family,
            "widths": self.widths,
            "prediction_type": self.prediction_type,
            "hash": self.short_hash,
            "random_weights": self.random_weights,
        }

    def pipeline(self) -> Any:
        """A diffusers text-to-image pipeline sharing these modules (no copies)."""
        if self.family == "sdxl":
            from diffusers import StableDiffusionXLPipeline

            return StableDiffusionXLPipeline(
                vae=self.vae,
                text_encoder=self.text_encoders[0],
                text_encoder_2=self.text_encoders[1],
                tokenizer=self.tokenizers[0],
                tokenizer_2=self.tokenizers[1],
                unet=self.unet,
                scheduler=self.scheduler,
            )
        from diffusers import StableDiffusionPipeline

        return StableDiffusionPipeline(
            vae=self.vae,
            text_encoder=self.text_encoders[0],
            tokenizer=self.tokenizers[0],
            unet=self.unet,
            scheduler=self.scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
