"""Use our embeddings, every kind, in a stock diffusers pipeline outside the app.

    from diffusers import StableDiffusionPipeline
    from embeddings.formats import load_embedding
    from embeddings.pipeline import install_embeddings

    pipe = StableDiffusionPipeline.from_pretrained(...)
    mycat = load_embedding("mycat.safetensors")          # a per-layer (P+/XTI) or standard embedding
    with install_embeddings(pipe, [mycat]) as installed:
        image = pipe(**installed.encode("a photo of mycat", "blurry"), num_inference_steps=30).images[0]

`install_embeddings` puts routing attention processors on the pipeline's UNet (wrapping the
processors it had, which come back on `remove()` / leaving the `with`); `encode` returns the
`prompt_embeds` / `negative_prompt_embeds` (and SDXL's pooled ones) to pass to the pipeline. The
prompt is encoded as in the app (A1111 rules: the embedding's name in the prompt takes its
vectors' token slots), so the images are the app's. Works with `StableDiffusionPipeline` (SD 1.x
and 2.x) and `StableDiffusionXLPipeline`. A standard embedding needs no processors; it works here
too, or through diffusers' own `load_textual_inversion` with the file's standard part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.families import CLIP_G, CLIP_L, single_encoder_key
from embeddings.kinds import conditioning_layout, install_routing
from embeddings.prompt import prepare_conditioning


@dataclass
class PipelineModel:
    """The parts of a diffusers pipeline the prompt encoder uses, under the names our models use."""

    family: str
    encoder_keys: tuple[str, ...]
    tokenizers: list[Any]
    text_encoders: list[Any]
    unet: Any

    @classmethod
    def of(cls, pipe) -> "PipelineModel":
        if getattr(pipe, "text_encoder_2", None) is not None:
            return cls("sdxl", (CLIP_L, CLIP_G), [pipe.tokenizer, pipe.tokenizer_2],
                       [pipe.text_encoder, pipe.text_encoder_2], pipe.unet)
        width = int(pipe.text_encoder.get_input_embeddings().weight.shape[1])
        key = single_encoder_key(width)
        return cls("sd2" if key != CLIP_L else "sd1", (key,), [pipe.tokenizer], [pipe.text_encoder], pipe.unet)

    @property
    def widths(self) -> dict[str, int]:
        return {k: int(te.get_input_embeddings().weight.shape[1])
                for k, te in zip(self.encoder_keys, self.text_encoders, strict=True)}


class InstalledEmbeddings:
    """Embeddings installed in one pipeline; see the module docstring."""

    def __init__(self, pipe, embeddings: Iterable[Embedding], clip_skip: int = 1):
        self.pipe = pipe
        self.model = PipelineModel.of(pipe)
        self.embeddings = list(embeddings)
        self.clip_skip = clip_skip
        for emb in self.embeddings:
            reason = emb.mismatch_reason(self.model.widths)
            if reason:
                raise EmbeddingError(f"{emb.name}: {reason}")
        # One routing for every installed embedding, so any prompt mixing them works.
        self.layout = conditioning_layout(pipe.unet, self.embeddings)
        self.routing = install_routing(pipe.unet, self.layout)

    @torch.no_grad()
    def encode(self, prompt: str, negative_prompt: str = "") -> dict[str, torch.Tensor]:
        """Keyword arguments for `pipe(...)`: the prompt and negative prompt with the embeddings in them."""
        (cond, uncond), _layout = prepare_conditioning(self.model, [prompt, negative_prompt], self.embeddings,
                                                       self.clip_skip, layout=self.layout)
        unet = self.pipe.unet
        out = {"prompt_embeds": cond.hidden.to(unet.device, unet.dtype),
               "negative_prompt_embeds": uncond.hidden.to(unet.device, unet.dtype)}
        if self.model.family == "sdxl":
            out["pooled_prompt_embeds"] = cond.pooled.to(unet.device, unet.dtype)
            out["negative_pooled_prompt_embeds"] = uncond.pooled.to(unet.device, unet.dtype)
        return out

    def remove(self) -> None:
        """Put the pipeline's own attention processors back."""
        if self.routing is not None:
            self.routing.remove()
            self.routing = None

    def __enter__(self) -> "InstalledEmbeddings":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def install_embeddings(pipe, embeddings: Iterable[Embedding], clip_skip: int = 1) -> InstalledEmbeddings:
    """Install `embeddings` (any kinds) in a stock diffusers SD / SDXL pipeline; see the module docstring."""
    return InstalledEmbeddings(pipe, embeddings, clip_skip)
