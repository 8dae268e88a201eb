"""Use our embeddings, every kind, in a stock diffusers pipeline outside the app.

    from diffusers import StableDiffusionPipeline
    from embeddings.formats import load_embedding
    from embeddings.pipeline import install_embeddings

    pipe = StableDiffusionPipeline.from_pretrained(...)
    mycat = load_embedding("mycat.safetensors")          # a per-layer (P+/XTI) or standard embedding
    with install_embeddings(pipe, [mycat]) as installed:
        image = pipe(**installed.encode("a photo of mycat", "blurry", steps=30)).images[0]

`install_embeddings` puts routing attention processors on the pipeline's UNet (wrapping the
processors it had, which come back on `remove()` / leaving the `with`); `encode` returns the
`prompt_embeds` / `negative_prompt_embeds` (and SDXL's pooled ones) to pass to the pipeline. The
prompt is encoded as in the app (A1111 rules: the embedding's name in the prompt takes its
vectors' token slots), so the images are the app's. Works with `StableDiffusionPipeline` (SD 1.x
and 2.x) and `StableDiffusionXLPipeline`. A standard embedding needs no processors; it works here
too, or through diffusers' own `load_textual_inversion` with the file's standard part.

A per-timestep embedding conditions each denoising step differently: give `encode` the step count
(`steps=`; set the pipeline's scheduler first). It encodes the prompt at every timestep of that
schedule once and returns, beside `num_inference_steps`, a `callback_on_step_end` that switches
`prompt_embeds` before each step (`embeddings.prompt.StepConditioning`; pass your own step-end
callback as `then=` to run it after the switch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.families import CLIP_G, CLIP_L, single_encoder_key
from embeddings.kinds import conditioning_layout, install_routing
from embeddings.prompt import StepConditioning, prepare_conditioning, schedule_timesteps, uses_timed


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

    def __init__(self, pipe, embeddings: Iterable[Embedding], clip_skip: int | None = None):
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
    def encode(self, prompt: str, negative_prompt: str = "", steps: int | None = None,
               then: Callable | None = None) -> dict[str, Any]:
        """Keyword arguments for `pipe(...)`: the prompt and negative prompt with the embeddings in them.

        `steps`: the number of denoising steps, needed when the prompts name a per-timestep
        embedding (then the result also holds `num_inference_steps` and the step-end callback that
        switches the conditioning per step; `then` runs after it); otherwise optional."""
        prompts = [prompt, negative_prompt]
        timesteps = None
        if uses_timed(self.model, prompts, self.embeddings):
            if not steps:
                raise EmbeddingError("the prompt names a per-timestep embedding: pass steps= (the pipeline's "
                                     "num_inference_steps) so every step's conditioning is encoded")
            timesteps = schedule_timesteps(self.pipe.scheduler, steps)
        (cond, uncond), _layout = prepare_conditioning(self.model, prompts, self.embeddings, self.clip_skip,
                                                       layout=self.layout, timesteps=timesteps)
        out: dict[str, Any] = {}
        if timesteps is not None and len(timesteps) > 1:
            per_step = StepConditioning(timesteps, cond, uncond, then=then)
            cond, uncond = per_step.at(0)
            out.update(callback_on_step_end=per_step, callback_on_step_end_tensor_inputs=per_step.tensor_inputs())
        elif then is not None:
            out["callback_on_step_end"] = then
        if steps:
            out["num_inference_steps"] = int(steps)
        unet = self.pipe.unet
        out.update(prompt_embeds=cond.hidden.to(unet.device, unet.dtype),
                   negative_prompt_embeds=uncond.hidden.to(unet.device, unet.dtype))
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


def install_embeddings(pipe, embeddings: Iterable[Embedding], clip_skip: int | None = None) -> InstalledEmbeddings:
    """Install `embeddings` (any kinds) in a stock diffusers SD / SDXL pipeline; see the module docstring."""
    return InstalledEmbeddings(pipe, embeddings, clip_skip)
