"""Create a new embedding from init text: the vectors start as the init text's token embeddings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from embeddings.embedding import MAX_VECTORS, Embedding, EmbeddingError
from embeddings.names import tokenize_plain, validate_name

InitMode = Literal["text", "zeros", "random"]


@dataclass(frozen=True)
class CreatePlan:
    """What creating an embedding would do; shown before pressing Create and printed by the CLI."""

    name: str
    init_text: str
    num_vectors: int
    init_mode: InitMode
    tokens: list[tuple[int, str]]  # (id, token text) of the init text
    rows: list[int]  # for each vector, which init token it copies (empty unless mode "text")

    @property
    def budget(self) -> str:
        return f"{self.num_vectors} of {MAX_VECTORS} prompt tokens"

    def describe(self) -> list[str]:
        lines = [f"init text {self.init_text!r} -> {len(self.tokens)} token(s): " + ", ".join(
            f"{t} ({i})" for i, t in self.tokens
        )]
        if self.init_mode == "text":
            fill = ", ".join(f"v{k}={self.tokens[r][1]}" for k, r in enumerate(self.rows))
            how = "repeated" if self.num_vectors > len(self.tokens) else (
                "truncated" if self.num_vectors < len(self.tokens) else "one per token"
            )
            lines.append(f"{self.num_vectors} vector(s) filled from the tokens ({how}): {fill}")
            used = [self.tokens[r][1] for r in self.rows]
            dropped = [t for _, t in self.tokens[self.num_vectors:]]
            if dropped:
                lines.append(f"not used (only {self.num_vectors} vector(s)): {', '.join(dropped)}; "
                             "raise the vectors or shorten the init text")
            repeated = sorted({t for t in used if used.count(t) > 1})
            if repeated:
                lines.append("used more than once: " + ", ".join(f"{t} x{used.count(t)}" for t in repeated))
        else:
            lines.append(f"{self.num_vectors} vector(s) filled with {self.init_mode}")
        lines.append(f"prompt budget used: {self.budget}")
        return lines


def plan_embedding(tokenizer, name: str, init_text: str, num_vectors: int, init_mode: InitMode = "text") -> CreatePlan:
    """Validate the inputs and work out which tokens fill which vectors (no model weights needed)."""
    validate_name(name, tokenizer)
    if not isinstance(num_vectors, int) or num_vectors < 1:
        raise EmbeddingError(f"vectors per token must be at least 1 (got {num_vectors})")
    if num_vectors > MAX_VECTORS:
        raise EmbeddingError(f"{num_vectors} vectors do not fit in a prompt: at most {MAX_VECTORS}")
    if init_mode not in ("text", "zeros", "random"):
        raise EmbeddingError(f"unknown init mode {init_mode!r}: use text, zeros or random")
    text = (init_text or "").strip()
    ids = tokenize_plain(tokenizer, text) if text else []
    if init_mode == "text":
        if not ids:
            raise EmbeddingError("init text is empty: give a word close to the concept (e.g. 'person', 'style'), "
                                 "or choose zero or random init")
        if len(ids) > MAX_VECTORS:
            raise EmbeddingError(f"init text is {len(ids)} tokens long; at most {MAX_VECTORS}")
    tokens = [(i, tokenizer.convert_ids_to_tokens(i)) for i in ids]
    # A1111's rule: vector k copies token floor(k*T/n): repeat when T < n, subsample when T > n.
    # We truncate instead of subsampling when T > n so the first words lead, as the issue asks.
    rows = []
    if init_mode == "text":
        t = len(ids)
        rows = [(k * t) // num_vectors if t <= num_vectors else k for k in range(num_vectors)]
    return CreatePlan(name.strip(), text, num_vectors, init_mode, tokens, rows)


def create_embedding(model, name: str, init_text: str, num_vectors: int, init_mode: InitMode = "text",
                     seed: int | None = None) -> Embedding:
    """Build the Embedding for `model` (a models.BaseModel) from a plan."""
    plan = plan_embedding(model.tokenizers[0], name, init_text, num_vectors, init_mode)
    ids = [i for i, _ in plan.tokens]
    gen = torch.Generator().manual_seed(seed if seed is not None else 0)
    vectors: dict[str, torch.Tensor] = {}
    for key, te in zip(model.encoder_keys, model.text_encoders, strict=True):
        table = te.get_input_embeddings().weight.detach().to("cpu", torch.float32)
        width = table.shape[1]
        if init_mode == "zeros":
            vectors[key] = torch.zeros(num_vectors, width)
        elif init_mode == "random":
            # Scale like real token rows so the first steps behave as with text init.
            std = float(table.std())
            vectors[key] = torch.randn(num_vectors, width, generator=gen) * std
        else:
            vectors[key] = table[torch.tensor([ids[r] for r in plan.rows])].clone()
    return Embedding(
        name=plan.name,
        vectors=vectors,
        step=0,
        metadata={
            "init_text": plan.init_text,
            "init_mode": init_mode,
            "base_model": model.name,
            "base_model_hash": model.short_hash,
            "family": model.family,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )


def check_start(base: Embedding) -> None:
    """Only a standard embedding can be started from (every kind is made from standard vectors);
    EmbeddingError otherwise. Needs no model, so a form can say it before one loads."""
    if base.kind != "standard":
        raise EmbeddingError(f"{base.name} is a {base.kind} embedding; start from a standard one")


def start_from_embedding(base: Embedding, name: str, model) -> Embedding:
    """A new embedding `name` (step 0) holding a standard embedding's vectors, e.g. a trained
    one to refine as per-layer or per-timestep: the kind's `make` then starts every part there.
    Raises EmbeddingError when `base` is of another kind, does not fit `model` or `name` cannot
    be a name."""
    check_start(base)
    reason = base.mismatch_reason(model.widths)
    if reason:
        raise EmbeddingError(f"{base.name}: {reason}")
    validate_name(name, model.tokenizers[0])
    return base.copy(name=name.strip(), step=0,
                     metadata={**base.metadata, "started_from": base.name, "started_from_step": int(base.step)})
