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

Direct conditioning (`embeddings.kinds.direct`): an embedding whose kind gives `encoder_inputs`
has its vectors in the encoder's OUTPUT space. Its slots read those fixed inputs (the carrier),
and its vectors then overwrite the encoder's outputs there; with no token-space vector needing a
gradient, the encoder runs without gradients (no backward through it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.kinds import LayerLayout, coarse_mask, conditioning_layout, kind_of, layer_layout, routed, style_mix
from embeddings.names import NameMatcher, tokenize_plain

log = logging.getLogger(__name__)

CHUNK = 77
PLACEHOLDER_ID = 0  # A1111 uses id 0 ("!") for embedding slots; never EOS, which CLIP pools on
BREAK = re.compile(r"(?<![^\s,])BREAK(?![^\s,])")  # the keyword, as a word of its own
STEP_ROWS_PER_PASS = 256  # generation with a timed embedding: text-encoder rows (steps x groups) per pass
COMMA_BACKTRACK = 20  # A1111's default: a chunk ends at its last comma when that is this close to the end
ALIAS_SEP = "\x00"  # "name\x00j": another copy of embedding `name` in one prompt (the trainer's vector shuffle)


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
                 layout: LayerLayout | None = None, carriers: Mapping[str, Mapping[str, torch.Tensor]] | None = None):
        """`layout`: the layer routing installed on the UNet when per-layer embeddings are used
        (`embeddings.kinds.conditioning_layout`); None for standard conditioning. `carriers`: the
        embeddings whose vectors are in the encoder's output space (direct), with what the encoder
        reads at their slots ([n, width] per key: `Kind.encoder_inputs`)."""
        self.model = model
        self.vector_counts = dict(vector_counts)
        self.clip_skip = max(1, int(clip_skip))
        self.layout = layout
        self.carriers = {name: dict(c) for name, c in (carriers or {}).items()}
        self.matcher = NameMatcher(model.tokenizers[0], self.vector_counts)

    @classmethod
    def for_embeddings(cls, model, embeddings: Mapping[str, Embedding] | list[Embedding], clip_skip: int = 1,
                       layout: LayerLayout | None = None):
        embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
        carriers = {e.name: c for e in embs if (c := kind_of(e).encoder_inputs(e)) is not None}
        return cls(model, {e.name: e.num_vectors for e in embs}, clip_skip, layout, carriers)

    def _carrier(self, name: str) -> dict[str, torch.Tensor] | None:
        return self.carriers.get(name.split(ALIAS_SEP, 1)[0])

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
        A timed kind (per-timestep) gives one set per prompt: [B, 1, n, width], or [B, groups, n, width]
        with a layout; each prompt's rows get their own vectors in the same pass.

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
                if t.dim() == 4 and (t.shape[0] != len(prompts) or t.shape[1] not in (1, groups)):
                    raise ValueError(f"{name}: {key} has per-prompt vectors {tuple(t.shape)} for {len(prompts)} "
                                     f"prompt(s) and {groups} layer group(s)")
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
        def pick(name: str, g: int) -> dict[str, torch.Tensor]:  # [n, width], or [B, n, width] per prompt
            return {k: t[g] if t.dim() == 3 else t[:, g if t.shape[1] > 1 else 0] if t.dim() == 4 else t
                    for k, t in vectors[name].items()}

        def per_group(t: torch.Tensor) -> bool:
            return t.dim() == 3 or (t.dim() == 4 and t.shape[1] > 1)

        by_value = not (torch.is_grad_enabled() and any(t.requires_grad for n in used for t in vectors[n].values()))
        variants: list[dict[str, dict[str, torch.Tensor]]] = []
        signatures: list[tuple] = []
        slot_variant: list[int] = []
        for g in range(groups):
            # identity of what group g splices: (name, own group) per name, or the values themselves
            sig = tuple((n, g if any(per_group(t) for t in vectors[n].values()) else -1) for n in used)
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
        """[V, B, 77, D] hidden states (and [V, B, P] pooled for SDXL) of every variant, one pass per encoder.
        A variant's [B, n, width] vectors (one set per prompt) go to each prompt's own rows."""
        hidden_parts = []
        pooled = None
        is_xl = self.model.family == "sdxl"
        count = len(variants)
        # Output-space (direct) names read their fixed carrier: when no name puts its own vectors into
        # the input, every variant reads the same input, and one pass serves them all.
        passes = 1 if all(self._carrier(n) is not None for n in variants[0]) else count
        for idx, (key, te) in enumerate(zip(self.model.encoder_keys, self.model.text_encoders, strict=True)):
            device = te.get_input_embeddings().weight.device
            ids = tp.ids[idx].to(device).repeat(passes, 1)
            fixes, outputs = [], []  # into the token embeddings; over the encoder's outputs
            for v, variant in enumerate(variants):
                for b, s, name, k in tp.fixes:
                    if name not in variant:
                        continue
                    vec = _rows_vectors(variant[name][key], b // tp.chunks)[:k]
                    carrier = self._carrier(name)
                    if carrier is None:
                        fixes.append((v * batch + b, s, vec))
                        continue
                    if v < passes:
                        fixes.append((v * batch + b, s, carrier[key][:k]))
                    outputs.append((v * batch + b, s, vec))
            # Only output-space vectors learn: the encoder runs without gradients (no backward through it).
            frozen = outputs and not any(vec.requires_grad for _b, _s, vec in fixes)
            with torch.no_grad() if frozen else contextlib.nullcontext(), splice_vectors(te, fixes):
                out = te(ids, output_hidden_states=is_xl or self.clip_skip > 1, return_dict=True)
            if is_xl:
                h = out.hidden_states[-(self.clip_skip + 1)]
                if idx == len(self.model.text_encoders) - 1:
                    pooled = out.text_embeds if passes == count else out.text_embeds.repeat(count, 1)
            elif self.clip_skip > 1:
                h = out.hidden_states[-self.clip_skip]
                h = te.text_model.final_layer_norm(h) if hasattr(te, "text_model") else te.final_layer_norm(h)
            else:
                h = out.last_hidden_state
            hidden_parts.append(_write_rows(h if passes == count else h.repeat(count, 1, 1), outputs))
        hidden = hidden_parts[0] if len(hidden_parts) == 1 else torch.cat(hidden_parts, dim=-1)
        hidden = hidden.reshape(count, batch, *hidden.shape[1:])
        if pooled is not None:
            pooled = pooled.reshape(count, batch, *pooled.shape[1:])
        return hidden, pooled


def _rows_vectors(t: torch.Tensor, prompt: int) -> torch.Tensor:
    """A variant's vectors for one prompt: [n, width] serve every prompt, [B, n, width] one each."""
    return t[prompt] if t.dim() == 3 else t


@contextlib.contextmanager
def splice_vectors(text_encoder, fixes: list[tuple[int, int, torch.Tensor]]) -> Iterator[None]:
    """While active, the token-embedding output gets `vec` written at rows [b, s:s+len(vec)]."""
    if not fixes:
        yield
        return
    module = text_encoder.get_input_embeddings()

    def hook(_module, _inputs, output: torch.Tensor) -> torch.Tensor:
        return _write_rows(output, fixes)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _write_rows(hidden: torch.Tensor, fixes: list[tuple[int, int, torch.Tensor]]) -> torch.Tensor:
    """`hidden` [rows, tokens, width] with `vec` written at [b, s:s+len(vec)] for each fix (out of place,
    so gradients flow into the vectors)."""
    if not fixes:
        return hidden
    rows, cols, vals = [], [], []
    for b, s, vec in fixes:
        n = vec.shape[0]
        rows.append(torch.full((n,), b, dtype=torch.long))
        cols.append(torch.arange(s, s + n))
        vals.append(vec)
    r = torch.cat(rows).to(hidden.device)
    c = torch.cat(cols).to(hidden.device)
    v = torch.cat(vals).to(device=hidden.device, dtype=hidden.dtype)
    return hidden.index_put((r, c), v)


@torch.no_grad()
def encoder_outputs(model, name: str, vectors: Mapping[str, torch.Tensor], prompt: str | None = None,
                    clip_skip: int = 1) -> dict[str, torch.Tensor]:
    """The text encoder's outputs at the slots of embedding `name` (token embeddings `vectors`,
    [n, width] per key) in `prompt` (default: the name alone), as the UNet's context holds them
    (SDXL: each encoder's part), [n, width] float32 per key: what a direct-conditioning
    embedding starts from (`embeddings.kinds.direct`)."""
    enc = PromptEncoder(model, {name: next(iter(vectors.values())).shape[0]}, clip_skip)
    tp = enc.tokenize([name if prompt is None else prompt])
    spots = [(row, s, k) for row, s, nm, k in tp.fixes if nm == name]
    if not spots:
        raise EmbeddingError(f"{name!r} does not occur in the prompt {prompt!r}")
    row, s, k = spots[0]
    hidden, _pooled = enc._encode_batched(tp, [{name: dict(vectors)}], tp.ids[0].shape[0])
    at = hidden[0, row, s:s + k].to("cpu", torch.float32)
    widths = [int(te.config.hidden_size) for te in model.text_encoders]
    return {key: t.clone() for key, t in zip(model.encoder_keys, torch.split(at, widths, dim=-1), strict=True)}


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


def conditioning_clip_skip(embeddings: Iterable[Embedding], clip_skip: int | None = None) -> int:
    """The clip skip a prompt naming `embeddings` is encoded with: `clip_skip` (None: 1), unless one of
    them is tied to a layer's outputs (`Kind.clip_skip`: direct), which then decides; asking for
    another is an error, since its vectors would sit among another layer's outputs."""
    tied: dict[int, list[str]] = {}
    for e in embeddings:
        if (own := kind_of(e).clip_skip(e)) is not None:
            tied.setdefault(own, []).append(e.name)
    if len(tied) > 1:
        raise EmbeddingError("these embeddings are tied to different clip skips: " + "; ".join(
            f"{', '.join(names)} to {k}" for k, names in sorted(tied.items())) + "; use one of them at a time")
    if not tied:
        return 1 if clip_skip is None else max(1, int(clip_skip))
    ((own, names),) = tied.items()
    if clip_skip is not None and max(1, int(clip_skip)) != own:
        raise EmbeddingError(f"{', '.join(names)}: direct conditioning trained at clip skip {own} (its vectors are "
                             f"that layer's outputs), asked for clip skip {clip_skip}; use clip skip {own}")
    return own


def prepare_conditioning(model, prompts: list[str], embeddings: Mapping[str, Embedding] | list[Embedding],
                         clip_skip: int | None = None, *, layout: LayerLayout | None = None,
                         timesteps: Sequence[float] | None = None,
                         ) -> tuple[list[TextConditioning], LayerLayout | None]:
    """Encode `prompts` with the embeddings they name (any kinds, mixed), and the routing the UNet
    needs for them (install it with `embeddings.kinds.routed`), or for an already installed
    `layout`. Contexts come back with equal lengths, ready to pair for CFG.

    With `timesteps` (a denoising schedule), a prompt naming a timed embedding (per-timestep) is
    encoded at every one of them in ONE batched pass: its conditioning has a row per timestep
    ([S, L, D]: row i for timesteps[i]), the others one row (`StepConditioning` switches them).
    Without, a timed embedding conditions with its standard part. `clip_skip`: None is 1, or the
    clip skip a direct embedding in the prompts was made for (`conditioning_clip_skip`)."""
    embs = list(embeddings.values()) if isinstance(embeddings, Mapping) else list(embeddings)
    names = PromptEncoder.for_embeddings(model, embs).tokenize(prompts).used if embs else set()
    used = [e for e in embs if e.name in names]
    clip_skip = conditioning_clip_skip(used, clip_skip)
    layout = layout if layout is not None else conditioning_layout(model.unet, used)
    enc = PromptEncoder.for_embeddings(model, embs, clip_skip, layout)
    vecs = embedding_vectors(used, layout)
    chunks = max(enc.tokenize([p]).chunks for p in prompts)  # equal lengths for CFG: pad the shorter
    timed = {e.name: e for e in used if kind_of(e).timed} if timesteps is not None else {}
    conds = []
    for p in prompts:
        if timed and enc.tokenize([p]).used & timed.keys():
            ts = torch.tensor([float(t) for t in timesteps], dtype=torch.float64)
            at = {**vecs, **{n: kind_of(e).condition_at(e, layout, ts) for n, e in timed.items()}}
            # a pass holds steps x layer groups rows: bound it (the result is the same in pieces)
            per_pass = max(1, STEP_ROWS_PER_PASS // (layout.size if layout is not None else 1))
            pieces = [enc.encode([p] * len(ts[i:i + per_pass]),
                                 {n: {k: t[i:i + per_pass] if n in timed else t for k, t in v.items()}
                                  for n, v in at.items()}, min_chunks=chunks)
                      for i in range(0, len(ts), per_pass)]
            conds.append(TextConditioning(torch.cat([c.hidden for c in pieces]),
                                          None if pieces[0].pooled is None else torch.cat([c.pooled for c in pieces])))
        else:
            conds.append(enc.encode([p], vecs, min_chunks=chunks))
    length = max(c.hidden.shape[1] for c in conds)
    return [TextConditioning(widen(c.hidden, length), c.pooled) for c in conds], layout


def prompt_token_count(tokenizer, text: str, vector_counts: Mapping[str, int]) -> int:
    """Token slots a prompt uses (embeddings count as their vectors), as A1111's counter shows."""
    plain = tokenize_plain(tokenizer, text)
    total = len(plain)
    for m in NameMatcher(tokenizer, vector_counts).find(plain):
        total += vector_counts[m.name] - m.length
    return total


def schedule_timesteps(scheduler, steps: int) -> list[float]:
    """The timesteps a stock pipeline denoises at with `scheduler` and `steps` (set on a copy, so the
    pipeline's own scheduler is untouched): what per-timestep conditioning is encoded for."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(steps)
    return [float(t) for t in sched.timesteps]


def uses_timed(model, prompts: list[str], embeddings: Mapping[str, Embedding] | list[Embedding]) -> bool:
    """Whether `prompts` name an embedding whose conditioning changes with the timestep."""
    embs = [e for e in (embeddings.values() if isinstance(embeddings, Mapping) else embeddings) if kind_of(e).timed]
    return bool(embs) and bool(PromptEncoder.for_embeddings(model, embs).tokenize(prompts).used)


@dataclass
class StepConditioning:
    """Conditioning that changes per denoising step, as a stock pipeline's `callback_on_step_end`.

    `cond` / `uncond` come from `prepare_conditioning(..., timesteps=...)`: row i is the
    conditioning at `timesteps[i]` (one row: the same at every step). Start the pipeline with
    `at(0)`; after step i the callback puts step i+1's into `prompt_embeds` (with CFG the
    pipeline's [negative; positive] pair, repeated per image) and, for SDXL, the pooled
    `add_text_embeds`. The step's own timestep is checked against the encoded schedule, so a
    pipeline run with another step count or scheduler fails instead of conditioning wrongly.
    `then`: another step-end callback, called after the switch."""

    timesteps: list[float]
    cond: TextConditioning
    uncond: TextConditioning
    then: Callable | None = None

    def at(self, i: int) -> tuple[TextConditioning, TextConditioning]:
        def row(c: TextConditioning) -> TextConditioning:
            r = min(i, c.hidden.shape[0] - 1)
            return TextConditioning(c.hidden[r:r + 1], None if c.pooled is None else c.pooled[r:r + 1])

        return row(self.cond), row(self.uncond)

    def tensor_inputs(self) -> list[str]:
        """`callback_on_step_end_tensor_inputs` for the pipeline."""
        return ["latents", "prompt_embeds", *(["add_text_embeds"] if self.cond.pooled is not None else [])]

    def __call__(self, pipe, i: int, t, callback_kwargs: dict) -> dict:
        if i >= len(self.timesteps) or abs(float(t) - self.timesteps[i]) > 1e-3:
            raise EmbeddingError(f"denoising step {i} is at timestep {float(t):g}, but the per-timestep "
                                 f"conditioning was encoded for {len(self.timesteps)} steps at other timesteps; encode "
                                 f"with the pipeline's scheduler and step count")
        if i + 1 < len(self.timesteps):
            cond, uncond = self.at(i + 1)
            cfg = bool(getattr(pipe, "do_classifier_free_guidance", uncond is not None))
            for key, pos, neg in (("prompt_embeds", cond.hidden, uncond.hidden),
                                  ("add_text_embeds", cond.pooled, uncond.pooled)):
                current = callback_kwargs.get(key)
                if current is None or pos is None:
                    continue
                per_image = current.shape[0] // (2 if cfg else 1)
                pair = torch.cat([neg.repeat(per_image, *[1] * (neg.dim() - 1)),
                                  pos.repeat(per_image, *[1] * (pos.dim() - 1))]) if cfg else \
                    pos.repeat(per_image, *[1] * (pos.dim() - 1))
                callback_kwargs[key] = pair.to(current)
        return self.then(pipe, i, t, callback_kwargs) if self.then is not None else callback_kwargs


class GenerationStopped(Exception):
    """`generate` was asked to stop (`should_stop()` turned true) between two denoising steps."""


@torch.no_grad()
def generate(model, prompt: str, embeddings: Mapping[str, Embedding] | list[Embedding], *,
             negative_prompt: str = "", seed: int = 0, steps: int = 20, cfg: float = 7.0,
             width: int | None = None, height: int | None = None, scheduler=None, clip_skip: int | None = None,
             should_stop: Callable[[], bool] | None = None):
    """Plain text-to-image with embeddings in the prompt. Returns a PIL image.

    `should_stop` is asked after every denoising step; when it says yes, GenerationStopped is
    raised, so an interrupt during a training preview takes one step, not the whole image.
    A per-timestep embedding's conditioning is encoded once for every step of the schedule and
    switched per step (`StepConditioning`). `clip_skip`: as `prepare_conditioning`'s."""
    pipe = model.pipeline()
    if scheduler is not None:
        pipe.scheduler = scheduler
    pipe.set_progress_bar_config(disable=True)
    timesteps = (schedule_timesteps(pipe.scheduler, steps)
                 if uses_timed(model, [prompt, negative_prompt], embeddings) else None)
    (cond, uncond), layout = prepare_conditioning(model, [prompt, negative_prompt], embeddings, clip_skip,
                                                  timesteps=timesteps)
    per_step = StepConditioning(timesteps, cond, uncond) if timesteps and len(timesteps) > 1 else None
    if per_step is not None:
        cond, uncond = per_step.at(0)
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
    if per_step is not None:
        per_step.then = kwargs.get("callback_on_step_end")
        kwargs["callback_on_step_end"] = per_step
        kwargs["callback_on_step_end_tensor_inputs"] = per_step.tensor_inputs()
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
