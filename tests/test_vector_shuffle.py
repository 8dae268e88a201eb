"""Vector shuffling: each mode's invariant, probability, reproducibility."""

import random

import pytest

from training.vector_shuffle import SHUFFLE_MODES, shuffle_order


def _orders(n, mode, prob=1.0, step=0, max_steps=100, tries=200, seed=0):
    rng = random.Random(seed)
    return [shuffle_order(n, mode, prob, step, max_steps, rng) for _ in range(tries)]


def _moved_positions(orders):
    moved = set()
    for o in orders:
        if o is not None:
            moved |= {i for i, v in enumerate(o) if v != i}
    return moved


@pytest.mark.parametrize("mode", [m for m in SHUFFLE_MODES if m != "off"])
def test_results_are_permutations(mode):
    for n in range(1, 8):
        for o in _orders(n, mode, step=50, tries=20):
            assert o is None or sorted(o) == list(range(n))


@pytest.mark.parametrize(
    "mode,n,fixed,movable",
    [
        ("all", 5, set(), {0, 1, 2, 3, 4}),
        ("trailing", 5, {0}, {1, 2, 3, 4}),
        ("leading", 5, {4}, {0, 1, 2, 3}),
        ("between", 5, {0, 4}, {1, 2, 3}),
        ("dynamic", 5, {0, 4}, {1, 2, 3}),
        ("dynamic", 3, {0}, {1, 2}),
        ("dynamic", 2, set(), {0, 1}),
    ],
)
def test_mode_invariants(mode, n, fixed, movable):
    orders = _orders(n, mode)
    for o in orders:
        assert o is not None
        assert all(o[i] == i for i in fixed)
    # with 200 draws every movable position moves at least once
    assert _moved_positions(orders) == movable


def test_too_few_vectors_means_no_shuffle():
    assert _orders(1, "all", tries=5) == [None] * 5
    assert _orders(2, "trailing", tries=5) == [None] * 5
    assert _orders(2, "leading", tries=5) == [None] * 5
    assert _orders(3, "between", tries=5) == [None] * 5


def test_off_and_prob_zero_never_shuffle():
    assert _orders(6, "off", tries=50) == [None] * 50
    assert _orders(6, "all", prob=0.0, tries=50) == [None] * 50


def test_probability_is_respected():
    orders = _orders(6, "all", prob=0.3, tries=2000)
    rate = sum(o is not None for o in orders) / len(orders)
    assert 0.25 < rate < 0.35


def test_progressive_span_grows_with_progress():
    n, max_steps = 6, 100  # middle = positions 1..4
    early = _orders(n, "progressive", step=0, max_steps=max_steps)
    assert early == [None] * len(early)  # one middle vector active: nothing to swap
    mid = _orders(n, "progressive", step=50, max_steps=max_steps)
    assert _moved_positions(mid) == {1, 2, 3}
    late = _orders(n, "progressive", step=99, max_steps=max_steps)
    assert _moved_positions(late) == {1, 2, 3, 4}
    for o in late:
        assert o[0] == 0 and o[-1] == n - 1


def test_reproducible_with_a_seed_and_rng_state():
    a = _orders(8, "all", prob=0.5, seed=123, tries=30)
    b = _orders(8, "all", prob=0.5, seed=123, tries=30)
    c = _orders(8, "all", prob=0.5, seed=124, tries=30)
    assert a == b
    assert a != c
    # resuming from a saved RNG state continues the same sequence
    rng = random.Random(7)
    first = [shuffle_order(5, "between", 1.0, 0, 10, rng) for _ in range(5)]
    state = rng.getstate()
    rest = [shuffle_order(5, "between", 1.0, 0, 10, rng) for _ in range(5)]
    rng2 = random.Random()
    rng2.setstate(state)
    assert [shuffle_order(5, "between", 1.0, 0, 10, rng2) for _ in range(5)] == rest
    assert first != rest


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode 'sideways' is unknown"):
        shuffle_order(3, "sideways", 1.0, 0, 10, random.Random(0))
    with pytest.raises(ValueError, match="between 0 and 1"):
        shuffle_order(3, "all", 1.5, 0, 10, random.Random(0))
