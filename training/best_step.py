"""Which step to keep, and when to stop: two pure rules over a run's scores, said in plain words.

Early snapshots follow the rest of the prompt (editable) but look little like the subject; late
ones look like it and ignore the prompt. The suggestion is the highest likeness among snapshots
that keep at least `threshold` of the untrained embedding's editability. Auto-stop ends a run when
the chosen score has not improved for `patience` evaluations in a row.

No I/O and no models here: the trainer, `app.py evaluate` and the page all ask these functions, so
they cannot disagree, and the tests give them the edge cases (ties, all below the threshold, one
snapshot, no improvement from the start).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

LOWER_IS_BETTER = frozenset({"eval_loss"})


@dataclass(frozen=True)
class ScorePoint:
    """The scores of one snapshot."""

    step: int
    likeness: float
    editability: float


@dataclass(frozen=True)
class Suggestion:
    """The suggested step (None when nothing is scored) and the rule, in words, that chose it."""

    step: int | None
    words: str
    kept: tuple[int, ...] = ()  # the steps that keep enough editability


def suggest_best(points: Sequence[ScorePoint], baseline_editability: float | None,
                 threshold: float = 0.9) -> Suggestion:
    """The highest likeness among `points` whose editability is at least `threshold` × the
    untrained editability; a tie goes to the earlier step (it is the more editable one in
    practice, and the cheaper to have trained). When none keeps that much, the most editable one,
    said so; without an untrained editability, the highest likeness, said so."""
    if not points:
        return Suggestion(None, "no snapshot has scores yet: evaluate the run first")

    def best(pool: Sequence[ScorePoint], key: str) -> ScorePoint:
        # max by value, then the earliest step on a tie
        return min(pool, key=lambda p: (-getattr(p, key), p.step))

    share = f"{threshold:.0%}"
    if baseline_editability is None:
        pick = best(points, "likeness")
        return Suggestion(pick.step, f"step {pick.step}: the highest likeness ({pick.likeness:.3f}); the untrained "
                                     "embedding has no score, so editability was not compared")
    floor = threshold * baseline_editability
    kept = [p for p in points if p.editability >= floor - 1e-12]
    if kept:
        pick = best(kept, "likeness")
        among = "the only snapshot" if len(kept) == 1 else f"the {len(kept)} snapshots"
        return Suggestion(pick.step, f"step {pick.step}: the highest likeness ({pick.likeness:.3f}) among {among} "
                                     f"that keep at least {share} of the untrained editability "
                                     f"({floor:.3f} of {baseline_editability:.3f})",
                          tuple(p.step for p in kept))
    pick = best(points, "editability")
    return Suggestion(pick.step, f"step {pick.step}: no snapshot keeps {share} of the untrained editability "
                                 f"({baseline_editability:.3f}); this is the most editable one "
                                 f"({pick.editability:.3f}, likeness {pick.likeness:.3f})")


def auto_stop_reason(history: Sequence[tuple[int, float]], patience: int, score: str,
                     tolerance: float = 1e-6) -> str | None:
    """Why to stop now, or None: the last `patience` evaluations of `score` ((step, value) in
    step order) did not improve on the best before them. Lower is better for the eval loss,
    higher for the CLIP scores; a change within `tolerance` (relative) of the best is no
    improvement (float noise of an unchanged embedding must not keep a run going). The first evaluation sets
    the mark, so a score that never improves stops after `patience` more."""
    if patience < 1 or len(history) <= patience:
        return None
    sign = -1.0 if score in LOWER_IS_BETTER else 1.0
    best_i = 0
    for i, (_, value) in enumerate(history):
        best = history[best_i][1]
        if sign * (value - best) > tolerance * max(abs(best), 1e-12):
            best_i = i
    since = len(history) - 1 - best_i
    if since < patience:
        return None
    step, value = history[best_i]
    words = score.replace("_", " ")
    return (f"{words} has not improved for {since} evaluations (best {value:.4g} at step {step}; "
            f"auto-stop after {patience})")
