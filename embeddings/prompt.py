"""Encode prompts with embedding names replaced by their vectors (A1111 semantics).

Names are matched on token ids (case-insensitive, longest first); an embedding of N vectors
takes N token slots. The vectors are spliced into the token-embedding output with a forward
hook, before position embeddings, so the text encoder itself is untouched and gradients flow
only into the vectors. Training uses this with live tensors; previews and Generate use it with
stored embeddings.

Long prompts are encoded as A1111 and ComfyUI do: in chunks of 75 tokens (each with its own
start and end token, 77 in all), encoded separately and concatenated along the sequence, so
nothing past token 75 is lost. `BREAK` (upper case, a word of its own) ends a chunk early; an
embedding never straddles two chunks (it moves to the next one whole); when a chunk fills up and
its last comma is within 20 tokens of the end, the words after that comma move to the next chunk.
Prompts encoded together get the same number of chunks (empty ones pad the shorter). With
per-layer routing in use (a `layout`) a prompt stays one chunk, as the routing expects.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds import LayerLayout, coarse_mask, conditioning_layout, kind_of, layer_layout, routed, style_mix
from embeddings.names import NameMatcher, tokenize_plain

log = logging.getLogger(__name__)

CHUNK = 77
PLACEHOLDER_ID = 0  # A1111 uses id 0 ("!") for embedding slots; never EOS, which CLIP pools on
BREAK = re.compile(r"(?<![^\s,])BREAK(?![^\s,])")  # the keyword, as a word of its own
COMMA_BACKTRACK = 20  # A1111's default: a chunk ends at its last comma when that is this close to the end


@dataclass
class TokenizedPrompts:
    ids: list[torch.Tensor]  # per encoder, [B * chunks, 77]: prompt b's chunk c is row b * chunks + c
    fixes: list[tuple[int, int, str, int]]  # (row, first slot, embedding name, vectors used)
    truncated: list[int] = field(default_factory=list)  # prompts whose text did not fit (one-chunk only)
    used: set[str] = field(default_factory=set)
    chunks: int = 1  # 77-token chunks per prompt


def split_chunks(tokenizer, matcher: NameMatcher, vector_counts: Mapping[str, int],
                 text: str) -> tuple[list[list[int]], list[tuple[int, int, str, int]]]:
    """A prompt as chunks of at most 75 token ids (embedding slots as PLACEHOLDER_ID), and where
    each embedding goes: (chunk, slot in the chunk without the start token, name, vectors)."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    rows: list[list[int]] = [[]]
    fixes: list[tuple[int, int, str, int]] = []
    for i, part in enumerate(BREAK.split(text)):
        if i and rows[-1]:
            rows.append([])
        plain = tokenize_plain(tokenizer, part)
        items: list[tuple[list[int], str | None]] = []
        pos = 0
        for m in matcher.find(plain):
            items += [([t], None) for t in plain[pos:m.start]]
            items.append(([PLACEHOLDER_ID] * min(vector_counts[m.name], CHUNK - 2), m.name))
            pos = m.start + m.length
        items += [([t], None) for t in plain[pos:]]
        pending: list[tuple[int, str, int]] = []  # the current chunk's embeddings: (slot, name, vectors)
        for ids, name in items:
            row = rows[-1]
            if len(row) + len(ids) > CHUNK - 2:  # full: the rest goes to a new chunk
                moved: list[int] = []
                if name is None and comma in row:
                    cut = len(row) - row[::-1].index(comma)  # just after the last comma
                    if len(row) - cut <= COMMA_BACKTRACK:
                        moved = row[cut:]
                        del row[cut:]
                fixes.extend((len(rows) - 1, s, n, k) for s, n, k in pending if s < len(row))
                pending = [(s - len(row), n, k) for s, n, k in pending if s >= len(row)]
                rows.append(moved)
                row = rows[-1]
            if name is not None:
                pending.append((len(row), name, len(ids)))
            row.extend(ids)
        fixes.extend((len(rows) - 1, s, n, k) for s, n, k in pending)
    return rows, fixes


@dataclass
class TextConditioning:
    hidden: torch.Tensor  # [B, 77, D] cross-attention context
    pooled: torch.Tensor | None = None  # SDXL: pooled output of the second encoder


class PromptEncoder:
    """Tokenizes and encodes prompts for one base model and a set of embeddings."""

    def __init__(self, model, vector_counts: Mapping[str, int], clip_skip: int = 1,
                 layout: LayerLayout | None = None):
        """`layout`: the layer routing installed on the UNet when per-layer embeddings are used
        (`embeddings.kinds.conditioning_layout`); None for standard conditioning."""
        self.model = model
        self.vector_counts = dict(vector_counts)
        self.clip_skip = max(1, int(clip_skip))
        self.layout = layout
        self.matcher = NameMatcher(model.tokenizers[0], self.vector_counts)

    @classmethod
    def for_embeddings(cls, model, embeddings: Mapping[str, Embedding] | list[Embedding], clip_skip: int = 1,
                       layout: LayerLayout | None = None):
        embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
        return cls(model, {e.name: e.num_vectors for e in embs}, clip_skip, layout)

    def tokenize(self, prompts: list[str], min_chunks: int = 1) -> TokenizedPrompts:
        """Token ids of each prompt in 77-token chunks (see the module's docstring), every prompt
        padded with empty chunks to the longest one's count (at least `min_chunks`)."""
        tok0 = self.model.tokenizers[0]
        split = [split_chunks(tok0, self.matcher, self.vector_counts, text) for text in prompts]
        truncated: list[int] = []
        if self.layout is not None:  # routed contexts are one chunk per group: keep the first
            for b, (rows, fixes) in enumerate(split):
                if len(rows) > 1:
                    truncated.append(b)
                    split[b] = (rows[:1], [f for f in fixes if f[0] == 0])
        chunks = max([min_chunks, *(len(rows) for rows, _ in split)])
        fixes = [(b * chunks + c, s + 1, name, k)  # +1 for the start token
                 for b, (_, own) in enumerate(split) for c, s, name, k in own]
        ids = []
        for tok in self.model.tokenizers:
            pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
            bos, eos = tok.bos_token_id, tok.eos_token_id
            batch = torch.full((len(prompts) * chunks, CHUNK), pad, dtype=torch.long)
            for b, (rows, _) in enumerate(split):
                for c in range(chunks):
                    seq = [bos, *(rows[c] if c < len(rows) else []), eos]
                    batch[b * chunks + c, : len(seq)] = torch.tensor(seq)
            ids.append(batch)
        if truncated:
            log.warning("prompt(s) %s longer than 75 tokens were cut: per-layer conditioning takes one chunk",
                        truncated)
        used = {name for _, _, name, _ in fixes}
        return TokenizedPrompts(ids=ids, fixes=fixes, truncated=truncated, used=used, chunks=chunks)

    def encode(
        self,
        prompts: list[str],
        vectors: Mapping[str, Mapping[str, torch.Tensor]],
        tokenized: TokenizedPrompts | None = None,
        min_chunks: int = 1,
    ) -> TextConditioning:
        """`vectors[name][encoder_key]` is [n, width] (the same on every layer) or, with a `layout`,
        [groups, n, width] (one set per group: `embeddings.kinds`); live and trainable, or stored.

        Without per-group vectors in the prompts the result is the plain [B, 77, D] context. With
        them, the prompts are encoded once per distinct group variant, all variants in ONE batched
        text-encoder pass, and the context is [B, groups * 77, D] (group g at tokens g*77 ...), which
        the routing processors cut up per layer. Variants are reused when they are the same tensor
        (e.g. a standard embedding beside a per-layer one); without gradients also when their values
        are equal, so an untrained per-layer embedding costs one pass, as a standard one does.
        (With gradients, equal values must stay separate rows: each group needs its own gradient.)
        SDXL's pooled output (which is not per layer) is the mean over groups.

        A long prompt's chunks are concatenated: [B, chunks * 77, D] (the pooled output is the
        first chunk's, as in A1111)."""
        tp = tokenized or self.tokenize(prompts, min_chunks)
        groups = self.layout.size if self.layout is not None else 1
        used = sorted({name for _b, _s, name, _k in tp.fixes if name in vectors})
        for name in used:
            for key, t in vectors[name].items():
                if t.dim() == 3 and t.shape[0] != groups:
                    raise ValueError(f"{name}: {key} has {t.shape[0]} layer groups, the routing has {groups}")
        slot_variant, variants = self._variants(used, vectors, groups)
        hidden, pooled = self._encode_batched(tp, variants, len(prompts) * tp.chunks)
        if tp.chunks > 1:  # [V, B * C, 77, D] -> [V, B, C * 77, D]; pooled from each prompt's first chunk
            hidden = hidden.reshape(hidden.shape[0], len(prompts), tp.chunks * hidden.shape[2], hidden.shape[3])
            if pooled is not None:
                pooled = pooled.reshape(pooled.shape[0], len(prompts), tp.chunks, *pooled.shape[2:])[:, :, 0]
        if len(variants) == 1:
            return TextConditioning(hidden=hidden[0], pooled=None if pooled is None else pooled[0])
        index = torch.tensor(slot_variant, device=hidden.device)
        per_slot = hidden.index_select(0, index)  # [G, B, 77, D]
        context = per_slot.permute(1, 0, 2, 3).reshape(per_slot.shape[1], -1, per_slot.shape[-1])
        return TextConditioning(hidden=context,
                                pooled=None if pooled is None else pooled.index_select(0, index).mean(dim=0))

    def _variants(self, used: list[str], vectors: Mapping[str, Mapping[str, torch.Tensor]],
                  groups: int) -> tuple[list[int], list[dict[str, dict[str, torch.Tensor]]]]:
        """For each layer group, which variant it uses; and each distinct variant's [n, width] vectors."""
        def pick(name: str, g: int) -> dict[str, torch.Tensor]:
            return {k: (t[g] if t.dim() == 3 else t) for k, t in vectors[name].items()}

        by_value = not (torch.is_grad_enabled() and any(t.requires_grad for n in used for t in vectors[n].values()))
        variants: list[dict[str, dict[str, torch.Tensor]]] = []
        signatures: list[tuple] = []
        slot_variant: list[int] = []
        for g in range(groups):
            # identity of what group g splices: (name, own group) per name, or the values themselves
            sig = tuple((n, g if any(t.dim() == 3 for t in vectors[n].values()) else -1) for n in used)
            found = None
            for i, (other, variant) in enumerate(zip(signatures, variants, strict=True)):
                if other == sig or (by_value and all(
                        torch.equal(variant[n][k], v) for n in used for k, v in pick(n, g).items())):
                    found = i
                    break
            if found is None:
                signatures.append(sig)
                variants.append({n: pick(n, g) for n in used})
                found = len(variants) - 1
            slot_variant.append(found)
        return slot_variant, variants

    def _encode_batched(self, tp: TokenizedPrompts, variants: list[dict[str, dict[str, torch.Tensor]]],
                        batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[V, B, 77, D] hidden states (and [V, B, P] pooled for SDXL) of every variant, one pass per encoder."""
        hidden_parts = []
        pooled = None
        is_xl = self.model.family == "sdxl"
        count = len(variants)
        for idx, (key, te) in enumerate(zip(self.model.encoder_keys, self.model.text_encoders, strict=True)):
            device = te.get_input_embeddings().weight.device
            ids = tp.ids[idx].to(device).repeat(count, 1)
            fixes = [(v * batch + b, s, variant[name][key][:k])
                     for v, variant in enumerate(variants) for b, s, name, k in tp.fixes if name in variant]
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
        hidden = hidden.reshape(count, batch, *hidden.shape[1:])
        if pooled is not None:
            pooled = pooled.reshape(count, batch, *pooled.shape[1:])
        return hidden, pooled


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


def embedding_vectors(embeddings: Mapping[str, Embedding] | list[Embedding],
                      layout: LayerLayout | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """Each embedding's conditioning tensors for `layout`, as its kind lays them out."""
    embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
    return {e.name: kind_of(e).condition(e, layout) for e in embs}


def widen(hidden: torch.Tensor, length: int) -> torch.Tensor:
    """A plain [B, 77, D] context repeated to `length` tokens, so it pairs with a routed context
    (CFG concatenates the negative and the positive one): every layer group reads the same."""
    if hidden.shape[1] == length:
        return hidden
    return hidden.repeat(1, length // hidden.shape[1], 1)


def prepare_conditioning(model, prompts: list[str], embeddings: Mapping[str, Embedding] | list[Embedding],
                         clip_skip: int = 1, *, layout: LayerLayout | None = None,
                         ) -> tuple[list[TextConditioning], LayerLayout | None]:
    """Encode `prompts` with the embeddings they name (any kinds, mixed), and the routing the UNet
    needs for them (install it with `embeddings.kinds.routed`), or for an already installed
    `layout`. Contexts come back with equal lengths, ready to pair for CFG."""
    embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
    names = PromptEncoder.for_embeddings(model, embs, clip_skip).tokenize(prompts).used if embs else set()
    used = [e for e in embs if e.name in names]
    layout = layout if layout is not None else conditioning_layout(model.unet, used)
    enc = PromptEncoder.for_embeddings(model, embs, clip_skip, layout)
    vecs = embedding_vectors(used, layout)
    chunks = max(enc.tokenize([p]).chunks for p in prompts)  # equal lengths for CFG: pad the shorter
    conds = [enc.encode([p], vecs, min_chunks=chunks) for p in prompts]
    length = max(c.hidden.shape[1] for c in conds)
    return [TextConditioning(widen(c.hidden, length), c.pooled) for c in conds], layout


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
    (cond, uncond), layout = prepare_conditioning(model, [prompt, negative_prompt], embeddings, clip_skip)
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
    # The VAE decodes where the UNet ran (training keeps it off the accelerator between previews);
    # it goes back to where it was afterwards.
    vae = model.vae
    vae_at = next(vae.parameters())
    vae_device, vae_dtype = vae_at.device, vae_at.dtype
    if (vae_device, vae_dtype) != (device, model.unet.dtype):
        vae.to(device=device, dtype=model.unet.dtype)
    try:
        with routed(model.unet, layout):
            return pipe(**kwargs).images[0]
    finally:
        if (vae_device, vae_dtype) != (device, model.unet.dtype):
            vae.to(device=vae_device, dtype=vae_dtype)


def default_splits(layers: int, count: int = 5) -> list[int]:
    """`count` split points from "inner embedding on every layer" (0) to "outer on every layer"."""
    top = (layers + 1) // 2
    return sorted({round(i * top / max(1, count - 1)) for i in range(count)})


def parse_splits(text: str) -> list[int] | None:
    """'0, 2,4' -> [0, 2, 4]; '' -> None (the default splits). EmbeddingError for anything else."""
    if not (text or "").strip():
        return None
    try:
        splits = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise EmbeddingError(f"split points {text!r}: write whole numbers separated by commas, e.g. 0,2,4") from None
    if any(s < 0 for s in splits):
        raise EmbeddingError(f"split points {text!r}: they count layers, 0 or more")
    return splits


def generate_style_mix(model, prompt: str, inner: Embedding, outer: Embedding,
                       embeddings: Mapping[str, Embedding] | list[Embedding], splits: list[int] | None = None,
                       **generate_kwargs) -> list[tuple[int, object]]:
    """Style mixing as a row of images: for each split s, `inner` on the coarse layers (all but s
    cross-attention layers at each end) and `outer` on the fine ones, spliced where the prompt
    names `inner`. Returns [(s, PIL image)]; s = 0 is `inner` alone. Same seed for every image, so
    only the mix changes along the row."""
    layers = len(layer_layout(model.unet, "layer").layers)
    others = [e for e in (embeddings.values() if isinstance(embeddings, Mapping) else embeddings)
              if e.name != inner.name]
    row = []
    for s in splits if splits is not None else default_splits(layers):
        mixed = style_mix(inner, outer, model.unet, coarse_mask(layers, s))
        row.append((s, generate(model, prompt, [*others, mixed], **generate_kwargs)))
    return row
