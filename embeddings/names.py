"""Embedding names as prompt tokens: what makes a usable name and how names match in prompts.

A1111 matches names on token ids, not text: case-insensitive, longest match first. We follow
that exactly so a file that works there works here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from embeddings.embedding import MAX_VECTORS, EmbeddingError

_ALLOWED = re.compile(r"[^\w.\- ]", re.UNICODE)


def clean_name(name: str) -> str:
    """A1111's rule: keep letters, digits, '.', '_', '-' and spaces; strip the rest."""
    return _ALLOWED.sub("", name or "").strip()


def validate_name(name: str, tokenizer) -> list[int]:
    """Return the name's token ids, or raise EmbeddingError saying why it cannot be a name."""
    cleaned = clean_name(name)
    if not cleaned:
        raise EmbeddingError(f"name {name!r} is empty after removing characters other than letters, digits, . _ -")
    if cleaned != name.strip():
        raise EmbeddingError(f"name {name!r} has characters that cannot be in a file name or token; try {cleaned!r}")
    ids = tokenize_plain(tokenizer, cleaned)
    if not ids:
        raise EmbeddingError(f"name {name!r} gives no tokens")
    if len(ids) > MAX_VECTORS:
        raise EmbeddingError(f"name {name!r} is {len(ids)} tokens long; keep it short")
    return ids


def tokenize_plain(tokenizer, text: str) -> list[int]:
    """Token ids without BOS/EOS and without truncation."""
    return list(tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


@dataclass(frozen=True)
class Match:
    start: int  # position in the plain token list
    length: int  # tokens of the name consumed
    name: str


class NameMatcher:
    """Finds embedding names in token sequences, longest token sequence first (A1111 order)."""

    def __init__(self, tokenizer, names: Iterable[str]):
        self._by_first: dict[int, list[tuple[list[int], str]]] = {}
        for name in names:
            ids = tokenize_plain(tokenizer, name)
            if ids:
                self._by_first.setdefault(ids[0], []).append((ids, name))
        for entries in self._by_first.values():
            entries.sort(key=lambda e: (-len(e[0]), e[1]))

    def find(self, ids: Sequence[int]) -> list[Match]:
        out: list[Match] = []
        i = 0
        while i < len(ids):
            for name_ids, name in self._by_first.get(ids[i], ()):
                if list(ids[i : i + len(name_ids)]) == name_ids:
                    out.append(Match(i, len(name_ids), name))
                    i += len(name_ids)
                    break
            else:
                i += 1
        return out


def shadowing_pairs(tokenizer, names: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs (short, long) where `long`'s tokens begin with all of `short`'s tokens.

    In a prompt the longer name wins, but typing the short one in a context that tokenizes the
    same way as the long one's prefix would hit the wrong embedding: A1111's name-200/name-2000.
    """
    toks = {n: tokenize_plain(tokenizer, n) for n in names}
    pairs = []
    for a, ta in toks.items():
        for b, tb in toks.items():
            if a != b and ta and len(tb) > len(ta) and tb[: len(ta)] == ta:
                pairs.append((a, b))
    return sorted(pairs)
