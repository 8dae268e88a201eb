"""Vector shuffling for multi-vector embeddings (rinongal/textual_inversion PR #119).

Shuffling the order in which an embedding's vectors are spliced into the prompt, at training
time only, fights "vector cross-talk": each vector has to carry a self-contained piece of the
concept instead of relying on its neighbours. The modes follow the PR:

==============  ==============================================================================
off             never shuffle
all             random permutation of every vector
trailing        the first vector stays, the rest are permuted
leading         the last vector stays, the rest are permuted
between         first and last stay, the middle is permuted
progressive     first and last stay; the middle vectors that take part grow with training
                progress, one more each ``1/(n-2)`` of the run (the PR paired this mode with
                "progressive words", which added vectors over time; we have all vectors from
                the start, so the *shuffled span* grows instead)
dynamic         by count: >= 4 vectors -> between, 3 -> trailing, <= 2 -> all
==============  ==============================================================================

``prob`` is our extension (the PR always shuffles): each call shuffles with that probability.
Unknown modes are an error (the PR silently fell back to off).
"""

from __future__ import annotations

import random

SHUFFLE_MODES = ("off", "all", "trailing", "leading", "between", "progressive", "dynamic")


def _permute(n: int, movable: list[int], rng: random.Random) -> list[int] | None:
    if len(movable) < 2:
        return None
    order = list(range(n))
    picked = movable[:]
    rng.shuffle(picked)
    for slot, src in zip(movable, picked, strict=True):
        order[slot] = src
    return order


def _movable(n: int, mode: str, step: int, max_steps: int) -> list[int]:
    if mode == "dynamic":
        mode = "between" if n >= 4 else "trailing" if n == 3 else "all"
    if mode == "all":
        return list(range(n))
    if mode == "trailing":
        return list(range(1, n))
    if mode == "leading":
        return list(range(n - 1))
    if mode == "between":
        return list(range(1, n - 1))
    # progressive
    middle = list(range(1, n - 1))
    progress = min(1.0, max(0.0, step / max_steps)) if max_steps > 0 else 1.0
    active = min(len(middle), 1 + int(len(middle) * progress))
    return middle[:active]


def shuffle_order(n: int, mode: str, prob: float, step: int, max_steps: int, rng: random.Random) -> list[int] | None:
    """A permutation of ``range(n)`` (position i takes vector ``order[i]``), or None for no shuffle.

    The result depends only on the arguments and ``rng``'s state, so a run resumed with the
    same RNG state shuffles the same way. ``rng`` is not touched when the answer is certain
    (mode off, too few movable vectors, prob 0 or 1 for the coin).
    """
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"vector shuffle mode {mode!r} is unknown; use one of {', '.join(SHUFFLE_MODES)}")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"vector shuffle probability must be between 0 and 1, got {prob}")
    if mode == "off" or n < 2 or prob <= 0.0:
        return None
    movable = _movable(n, mode, step, max_steps)
    if len(movable) < 2:
        return None
    if prob < 1.0 and rng.random() >= prob:
        return None
    return _permute(n, movable, rng)
