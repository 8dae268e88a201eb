"""Encode prompts with embedding names replaced by their vectors (A1111 semantics).

Names are matched on token ids (case-insensitive, longest first); an embedding of N vectors
takes N token slots. The vectors are spliced into the token-embedding output with a forward
hook, before position embeddings, so the text encoder itself is untouched and gradients flow
only into the vectors. Training uses this with live tensors; previews and Generate use it with
stored embeddings.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from embeddings.embedding import Embedding
from embeddings.names import NameMatcher, tokenize_plain

log = logging.getLogger(__name__)

CHUNK = 77
PLACEHOLDER_ID = 0  # A1111 uses id 0 ("!") for embedding slots; never EOS, which CLIP pools on


@dataclass
class TokenizedPrompts:
    ids: list[torch.Tensor]  # per encoder, [B, 77]
    fixes: list[tuple[int, int, str, int]]  # (batch row, first slot, embedding name, vectors used)
    truncated: list[int] = field(default_factory=list)  # batch rows whose text did not fit
    used: set[str] = field(default_factory=set)


@dataclass
class TextConditioning:
    hidden: torch.Tensor  # [B, 77, D] cross-attention context
    pooled: torch.Tensor | None = None  # SDXL: pooled output of the second encoder


class PromptEncoder:
    """Tokenizes and encodes prompts for one base model and a set of embeddings."""

    def __init__(self, model, vector_counts: Mapping[str, int], clip_skip: int = 1):
        self.model = model
        self.vector_counts = dict(vector_counts)
        self.clip_skip = max(1, int(clip_skip))
        self.matcher = NameMatcher(model.tokenizers[0], self.vector_counts)

    @classmethod
    def for_embeddings(cls, model, embeddings: Mapping[str, Embedding] | list[Embedding], clip_skip: int = 1):
        embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
        return cls(model, {e.name: e.num_vectors for e in embs}, clip_skip)

    def tokenize(self, prompts: list[str]) -> TokenizedPrompts:
        rows: list[list[int]] = []
        fixes: list[tuple[int, int, str, int]] = []
        truncated: list[int] = []
        used: set[str] = set()
        for b, text in enumerate(prompts):
            plain = tokenize_plain(self.model.tokenizers[0], text)
            out: list[int] = []
            pos = 0
            for m in self.matcher.find(plain):
                out.extend(plain[pos : m.start])
                n = self.vector_counts[m.name]
                fixes.append((b, len(out), m.name, n))
                used.add(m.name)
                out.extend([PLACEHOLDER_ID] * n)
                pos = m.start + m.length
            out.extend(plain[pos:])
            if len(out) > CHUNK - 2:
                truncated.append(b)
                out = out[: CHUNK - 2]
            rows.append(out)
        # Drop fixes cut off by truncation, shorten partially cut ones (A1111 truncates too).
        kept = []
        for b, start, name, n in fixes:
            k = min(n, CHUNK - 2 - start)
            if k > 0:
                kept.append((b, start + 1, name, k))  # +1 for BOS
        ids = []
        for tok in self.model.tokenizers:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            bos, eos = tok.bos_token_id, tok.eos_token_id
            batch = torch.full((len(rows), CHUNK), pad, dtype=torch.long)
            for b, row in enumerate(rows):
                seq = [bos, *row, eos]
                batch[b, : len(seq)] = torch.tensor(seq)
            ids.append(batch)
        if truncated:
            log.warning("prompt(s) %s longer than 75 tokens were truncated", truncated)
        return TokenizedPrompts(ids=ids, fixes=kept, truncated=truncated, used=used)

    def encode(
        self,
        prompts: list[str],
        vectors: Mapping[str, Mapping[str, torch.Tensor]],
        tokenized: TokenizedPrompts | None = None,
    ) -> TextConditioning:
        """`vectors[name][encoder_key]` is a [n, width] tensor (live and trainable, or stored)."""
        tp = tokenized or self.tokenize(prompts)
        hidden_parts = []
        pooled = None
        is_xl = self.model.family == "sdxl"
        for idx, (key, te) in enumerate(zip(self.model.encoder_keys, self.model.text_encoders, strict=True)):
            device = te.get_input_embeddings().weight.device
            ids = tp.ids[idx].to(device)
            fixes = [(b, s, vectors[name][key][:k]) for b, s, name, k in tp.fixes if name in vectors]
            with splice_vectors(te, fixes):
                out = te(ids, output_hidden_states=is_xl or self.clip_skip > 1, return_dict=True)
            if is_xl:
                hidden_parts.append(out.hidden_states[-(self.clip_skip + 1)])
                if idx == len(self.model.text_encoders) - 1:
                    pooled = out.text_embeds
            elif self.clip_skip > 1:
                h = out.hidden_states[-self.clip_skip]
                hidden_parts.append(te.text_model.final_layer_norm(h) if hasattr(te, "text_model")
                                    else te.final_layer_norm(h))
            else:
                hidden_parts.append(out.last_hidden_state)
        hidden = hidden_parts[0] if len(hidden_parts) == 1 else torch.cat(hidden_parts, dim=-1)
        return TextConditioning(hidden=hidden, pooled=pooled)


@contextlib.contextmanager
def splice_vectors(text_encoder, fixes: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
    """While active, the token-embedding output gets `vec` written at rows [b, s:s+len(vec)]."""
    if not fixes:
        yield
        return
    module = text_encoder.get_input_embeddings()

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for b, s, vec in fixes:
            n = vec.shape[0]
            rows.append(torch.full((n,), b, dtype=torch.long))
            cols.append(torch.arange(s, s + n))
            vals.append(vec)
        r = torch.cat(rows).to(output.device)
        c = torch.cat(cols).to(output.device)
        v = torch.cat(vals).to(device=output.device, dtype=output.dtype)
        return output.index_put((r, c), v)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def embedding_vectors(embeddings: Mapping[str, Embedding] | list[Embedding]) -> dict[str, dict[str, torch.Tensor]]:
    embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
    return {e.name: e.vectors for e in embs}


def prompt_token_count(tokenizer, text: str, vector_counts: Mapping[str, int]) -> int:
    """Token slots a prompt uses (embeddings count as their vectors), as A1111's counter shows."""
    plain = tokenize_plain(tokenizer, text)
    total = len(plain)
    for m in NameMatcher(tokenizer, vector_counts).find(plain):
        total += vector_counts[m.name] - m.length
    return total


class GenerationStopped(Exception):
    """`generate` was asked to stop (`should_stop()` turned true) between two denoising steps."""


@torch.no_grad()
def generate(model, prompt: str, embeddings: Mapping[str, Embedding] | list[Embedding], *,
             negative_prompt: str = "", seed: int = 0, steps: int = 20, cfg: float = 7.0,
             width: int | None = None, height: int | None = None, scheduler=None, clip_skip: int = 1,
             should_stop: Callable[[], bool] | None = None):
    """Plain text-to-image with embeddings in the prompt. Returns a PIL image.

    `should_stop` is asked after every denoising step; when it says yes, GenerationStopped is
    raised, so an interrupt during a training preview takes one step, not the whole image."""
    enc = PromptEncoder.for_embeddings(model, embeddings, clip_skip=clip_skip)
    vecs = embedding_vectors(embeddings)
    cond = enc.encode([prompt], vecs)
    uncond = enc.encode([negative_prompt], vecs)
    pipe = model.pipeline()
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    device = model.unet.device
    size = (model.unet.config.sample_size or 64) * model.vae_scale_factor
    kwargs = dict(
        prompt_embeds=cond.hidden.to(device, model.unet.dtype),
        negative_prompt_embeds=uncond.hidden.to(device, model.unet.dtype),
        num_inference_steps=steps,
        guidance_scale=cfg,
        width=width or size,
        height=height or size,
        generator=torch.Generator(device="cpu").manual_seed(seed),
        output_type="pil",
    )
    if model.family == "sdxl":
        kwargs["pooled_prompt_embeds"] = cond.pooled.to(device, model.unet.dtype)
        kwargs["negative_pooled_prompt_embeds"] = uncond.pooled.to(device, model.unet.dtype)
    if should_stop is not None:
        def check(_pipe, _step, _timestep, callback_kwargs):
            if should_stop():
                raise GenerationStopped("stopped on request")
            return callback_kwargs

        kwargs["callback_on_step_end"] = check
    return pipe(**kwargs).images[0]
