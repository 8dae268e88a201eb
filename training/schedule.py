"""Learning-rate (and clip-value) schedules: A1111's stepped syntax plus constant, cosine, linear.

The stepped syntax is kept exactly as A1111 parses it, so a schedule string
copied from there trains the same way here:

* pieces are separated by ``,``; empty pieces are skipped;
* ``rate:step`` applies ``rate`` while the step count is below ``step``; ``-1`` means max steps;
* a bare ``rate`` (or a piece with 3+ ``:`` parts) runs to max steps and **ends parsing**;
* pieces whose step is already passed (``step <= cur_step``, e.g. on resume) are dropped;
* a step beyond max steps is clipped to max steps and ends parsing;
* when the last segment ends, training ends, even before max steps.

We are stricter than A1111 only where it silently accepted nonsense: rates must be finite and
> 0, and steps must increase. Everything is checked before any work starts.

Steps are optimizer steps. ``value_at(s)`` is the value used by the optimizer step that takes
the embedding from step ``s`` to ``s + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

SCHEDULE_KINDS = ("stepped", "constant", "cosine", "linear")

SYNTAX_HELP = (
    'use a number such as "0.005", or rate:step pieces such as "0.05:100, 0.005:1000, 0.001:-1" '
    "(rate until that step; -1 means until max steps)"
)


class ScheduleError(ValueError):
    """A schedule string or setting that cannot be used. The message names the piece and the syntax."""


def _parse_rate(text: str, piece: str, what: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise ScheduleError(f"{what} schedule piece {piece.strip()!r}: {text.strip()!r} is not a number; {SYNTAX_HELP}") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ScheduleError(f"{what} schedule piece {piece.strip()!r}: the value must be a finite number > 0")
    return rate


def _parse_step(text: str, piece: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ScheduleError(
            f"{what} schedule piece {piece.strip()!r}: step {text.strip()!r} is not a whole number; {SYNTAX_HELP}"
        ) from None


def _check_steps(max_steps: int, cur_step: int) -> None:
    for label, value in (("max_steps", max_steps), ("cur_step", cur_step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScheduleError(f"{label} must be a whole number, got {value!r}")
    if cur_step < 0:
        raise ScheduleError(f"cur_step must be >= 0, got {cur_step}")


def _parse(text: str, max_steps: int, cur_step: int, what: str) -> tuple[list[tuple[float, int]], list[str]]:
    """Segments plus notes about pieces that were dropped or ignored (for the UI/CLI to show)."""
    _check_steps(max_steps, cur_step)
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"{what} schedule is empty; {SYNTAX_HELP}")
    segments: list[tuple[float, int]] = []
    notes: list[str] = []
    pieces = text.split(",")
    last_raw_step: int | None = None
    for i, piece in enumerate(pieces):
        if not piece.strip():
            continue
        parts = piece.split(":")
        stop = False
        if len(parts) == 2:
            # A1111 order: the step is parsed first, then the rate.
            step = _parse_step(parts[1], piece, what)
            rate = _parse_rate(parts[0], piece, what)
            raw = max_steps if step == -1 else step
            if step > cur_step or step == -1:
                if last_raw_step is not None and raw <= last_raw_step:
                    raise ScheduleError(
                        f"{what} schedule piece {piece.strip()!r}: steps must increase "
                        f"(this one ends at {raw}, the one before at {last_raw_step})"
                    )
                last_raw_step = raw
            if step > cur_step:
                segments.append((rate, min(step, max_steps)))
                stop = step > max_steps
                if stop:
                    notes.append(f"{piece.strip()!r} ends after max steps ({max_steps}); clipped to {max_steps}")
            elif step == -1:
                segments.append((rate, max_steps))
                stop = True
            else:
                notes.append(f"{piece.strip()!r} dropped: its step {step} is not after the current step {cur_step}")
        else:
            rate = _parse_rate(parts[0], piece, what)
            segments.append((rate, max_steps))
            stop = True
            if len(parts) > 2:
                notes.append(f"{piece.strip()!r} has {len(parts)} ':' parts; read as the bare rate {parts[0].strip()}")
        if stop:
            rest = [p.strip() for p in pieces[i + 1 :] if p.strip()]
            if rest:
                notes.append(f"ignored after {piece.strip()!r} (it runs to the end): {', '.join(rest)}")
            break
    if not segments:
        raise ScheduleError(
            f"{what} schedule {text.strip()!r} leaves nothing to do from step {cur_step} "
            f"(every piece ends at or before it); {SYNTAX_HELP}"
        )
    return segments, notes


def parse_stepped(text: str, max_steps: int, cur_step: int = 0) -> list[tuple[float, int]]:
    """Parse A1111's stepped schedule into ``[(rate, end_step), ...]`` with A1111's exact rules."""
    return _parse(text, max_steps, cur_step, "learning-rate")[0]


@dataclass
class Schedule:
    """A value per optimizer step.

    For "stepped", ``segments`` are A1111's; for the other kinds it is ``[(base, max_steps)]``
    and ``cur_step`` is the origin of the warm-up and decay curve. To resume exactly, build the
    schedule with the step the original run started from: stepped values at later steps do not
    depend on it, and the curves must not restart.
    """

    kind: str
    segments: list[tuple[float, int]]
    max_steps: int
    cur_step: int = 0
    warmup_steps: int = 0
    min_lr: float = 0.0
    hold_last: bool = False  # clip schedules: after the end keep the last value, never end training
    notes: list[str] = field(default_factory=list)

    @property
    def end_step(self) -> int:
        """The step at which training stops (stepped: the last segment's end)."""
        if self.hold_last:
            return self.max_steps
        return self.segments[-1][1] if self.kind == "stepped" else self.max_steps

    @property
    def base(self) -> float:
        return self.segments[0][0]

    def value_at(self, step: int) -> float | None:
        """The value for the optimizer step from ``step`` to ``step + 1``; None once the schedule ended."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.kind == "stepped":
            for rate, end in self.segments:
                if step < end:
                    return rate
            return self.segments[-1][0] if self.hold_last else None
        if step >= self.max_steps:
            return None
        k = max(0, step - self.cur_step)
        if k < self.warmup_steps:
            return self.base * (k + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.base
        span = max(1, self.max_steps - self.cur_step - self.warmup_steps)
        progress = min(1.0, (k - self.warmup_steps) / span)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        factor = cosine if self.kind == "cosine" else 1.0 - progress  # else linear
        return self.min_lr + (self.base - self.min_lr) * factor

    def points(self, max_points: int = 200) -> list[tuple[int, float]]:
        """``(step, value)`` pairs from ``cur_step`` to the last step, for a plot.

        Stepped schedules always include both sides of each jump so the plot shows steps, not
        slopes; the rest is spread evenly up to ``max_points``.
        """
        first, last = self.cur_step, self.end_step - 1
        if last < first or max_points <= 0:
            return []
        must: set[int] = {first, last}
        if self.kind == "stepped":
            for _, end in self.segments:
                for s in (end - 1, end):
                    if first <= s <= last:
                        must.add(s)
        elif self.warmup_steps:
            must.add(min(last, first + self.warmup_steps))
        room = max(0, max_points - len(must))
        count = last - first + 1
        if count <= max_points:
            steps = set(range(first, last + 1))
        else:
            steps = must | {first + round(i * (count - 1) / max(1, room - 1)) for i in range(room)}
        out: list[tuple[int, float]] = []
        for s in sorted(steps):
            value = self.value_at(s)
            if value is not None:
                out.append((s, value))
        return out


def build_schedule(
    kind: str,
    text: str,
    max_steps: int,
    cur_step: int = 0,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
) -> Schedule:
    """Build and validate the learning-rate schedule. Raises ScheduleError before any work starts."""
    if kind not in SCHEDULE_KINDS:
        raise ScheduleError(f"schedule kind {kind!r} is unknown; use one of {', '.join(SCHEDULE_KINDS)}")
    _check_steps(max_steps, cur_step)
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ScheduleError(f"warmup_steps must be a whole number >= 0, got {warmup_steps!r}")
    if not isinstance(min_lr, int | float) or not math.isfinite(min_lr) or min_lr < 0:
        raise ScheduleError(f"min_lr must be a finite number >= 0, got {min_lr!r}")
    if kind == "stepped":
        if warmup_steps:
            raise ScheduleError("warmup_steps applies to constant, cosine and linear schedules, not stepped")
        segments, notes = _parse(text, max_steps, cur_step, "learning-rate")
        return Schedule("stepped", segments, max_steps, cur_step, notes=notes)
    if not isinstance(text, str) or not text.strip():
        raise ScheduleError(f"learning rate is empty; a {kind} schedule needs one base rate such as 0.005")
    if ":" in text or "," in text:
        raise ScheduleError(
            f"learning rate {text.strip()!r} is a stepped schedule, but the schedule kind is {kind!r}; "
            f"give one base rate such as 0.005, or choose the 'stepped' kind"
        )
    base = _parse_rate(text, text, "learning-rate")
    if min_lr > base:
        raise ScheduleError(f"min_lr {min_lr} is larger than the base learning rate {base}")
    return Schedule(kind, [(base, max_steps)], max_steps, cur_step, warmup_steps, float(min_lr))


def build_clip_schedule(text: str, max_steps: int, cur_step: int = 0) -> Schedule:
    """The gradient-clip value in the stepped syntax; after its end it keeps its last value."""
    segments, notes = _parse(text, max_steps, cur_step, "clip-value")
    return Schedule("stepped", segments, max_steps, cur_step, hold_last=True, notes=notes)
