"""The current view of a job, folded from its events: what the Train tab draws and `train` prints.

    view = JobView(title=job.title)
    events, cursor = job.events_since(0)
    fold(view, events)                 # later: fold(view, job.events_since(cursor)[0]) ...

The fold is the one place that decides what the events mean for a viewer: which progress counts,
the chart series, previews, files by what they are, messages and warnings, how the job ended.
The web UI and the CLI only present a view; they never interpret events themselves.

Folding is incremental (a view plus the events past its cursor), so a page polling once a second
folds only what is new. It also reads a whole `events.jsonl` of a resumed run, which holds one job
after another in the same file: the charts follow the absolute step (a step that comes again after
a kill and resume replaces what was logged for it and after it), and a job that starts after one
that ended starts a fresh progress, result and error. Kinds the fold does not know are skipped.

A view may be read by one thread while another folds into it: the fold only appends to its lists
or swaps in new ones, never edits one in place, so a reader sees a consistent prefix.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs import events as ev
from jobs.events import Event, JobEvent

DONE_STATES = frozenset({"finished", "failed", "interrupted"})


@dataclass(frozen=True)
class Note:
    """A line of the job's log a person reads: level is "message", "warning" or "error"."""

    level: str
    text: str


@dataclass
class JobView:
    title: str = ""
    state: str = "queued"
    ahead: int | None = None  # jobs ahead of this one, while it is queued
    progress: ev.Progress | None = None  # the latest, of any phase
    loop: ev.Progress | None = None  # the latest of the training loop (phase None): steps, it/s, ETA
    losses: list[ev.Loss] = field(default_factory=list)
    norms: list[ev.Norms] = field(default_factory=list)
    evals: list[ev.Eval] = field(default_factory=list)
    scores: list[ev.Scores] = field(default_factory=list)  # CLIP scores by step; the untrained one first
    previews: list[ev.Preview] = field(default_factory=list)
    files: list[ev.Files] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # messages, warnings and errors, oldest first
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    seen: int = 0  # events folded so far: for the view of one job, the cursor into its log

    # --- what viewers ask ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state in DONE_STATES

    @property
    def phase(self) -> str | None:
        """What the job is doing now: "loading" (the base model), "latents" (building the latent
        cache), "preview" (rendering previews), None in the training loop or before it starts.
        A preview round that ended (done == total) is back in the loop."""
        p = self.progress
        if p is None or (p.phase == "preview" and p.done >= p.total):
            return None
        return p.phase

    @property
    def end_step(self) -> int | None:
        """The absolute step the run trains to (a resumed run's too), from the loop's progress."""
        p = self.loop
        if p is None or p.step is None:
            return None
        return p.step - p.done + p.total

    @property
    def fraction(self) -> float:
        """How far the job is, 0..1: the latent cache while it is built, else the absolute step
        over the step the run trains to, so a run resumed at 30 of 60 starts half way."""
        p = self.progress
        if p is not None and p.phase in ("loading", "latents"):
            return p.done / p.total if p.total else 0.0
        end = self.end_step
        if end:
            return min(1.0, (self.step or 0) / end)
        return p.done / p.total if p and p.total and p.phase is None else 0.0

    def activity(self) -> str:
        """The phase in words, for a status line: "loading model", "caching latents 3/7",
        "training", "preview 1/2 at step 30" ("" before anything happened or once done)."""
        p, phase = self.progress, self.phase
        if p is None or self.done:
            return ""
        if phase == "loading":
            return "loading model"
        if phase == "latents":
            return f"caching latents {p.done}/{p.total}"
        if phase == "preview":
            return f"preview {p.done + 1}/{p.total} at step {p.step}"
        return "training" if self.loop is not None else ""

    @property
    def reason(self) -> str | None:
        """Why a run did not train ("nothing to train: ..."), from its result."""
        if isinstance(self.result, dict) and self.result.get("stopped") == "nothing to do":
            return str(self.result.get("reason") or "nothing to train")
        return None

    @property
    def step(self) -> int | None:
        """The latest absolute optimizer step."""
        if self.progress and self.progress.step is not None:
            return self.progress.step
        return self.losses[-1].step if self.losses else None

    @property
    def stopped(self) -> str | None:
        """Why a training run ended ("finished", "interrupted", ...), from its result."""
        return self.result.get("stopped") if isinstance(self.result, dict) else None

    @property
    def messages(self) -> list[str]:
        """Messages, newest first."""
        return [n.text for n in reversed(self.notes) if n.level == "message"]

    @property
    def warnings(self) -> list[str]:
        """Warnings, newest first."""
        return [n.text for n in reversed(self.notes) if n.level == "warning"]

    def files_by_what(self) -> dict[str, tuple[str, ...]]:
        """The latest files of each kind: {"snapshot": (...), "final": (...), "run folder": (...)}."""
        return {f.what: f.paths for f in self.files}

    @property
    def run_folder(self) -> str | None:
        paths = self.files_by_what().get(ev.Files.RUN_FOLDER)
        return paths[0] if paths else None

    def loss_series(self) -> dict[str, list[tuple[int, float]]]:
        """Chart series by name ("loss", "smoothed", "lr", "eval"): (absolute step, value) points."""
        return {
            "loss": [(e.step, e.loss) for e in self.losses],
            "smoothed": [(e.step, e.smoothed) for e in self.losses],
            "lr": [(e.step, e.lr) for e in self.losses],
            "eval": [(e.step, e.loss) for e in self.evals],
        }

    def score_series(self) -> dict[str, list[tuple[int, float]]]:
        """CLIP score series ("likeness", "editability"): (absolute step, value) points, the
        untrained embedding's first."""
        return {"likeness": [(e.step, e.likeness) for e in self.scores],
                "editability": [(e.step, e.editability) for e in self.scores]}

    def layer_grid(self) -> tuple[int, dict[str, list[list[float]]]] | None:
        """The latest per-layer norms (step, {encoder: groups x vectors}) for the heat map of a
        per-layer embedding; None while the run sent none (a standard embedding never does)."""
        for e in reversed(self.norms):
            if e.layers:
                return e.step, {k: [list(row) for row in grid] for k, grid in e.layers.items()}
        return None

    def norm_series(self) -> dict[str, list[tuple[int, float]]]:
        """One series per learned vector: "v0", "v1"... for one text encoder, "clip_l[0]",
        "clip_g[0]"... when there are several."""
        out: dict[str, list[tuple[int, float]]] = {}
        for e in self.norms:
            several = len(e.norms) > 1
            for key, values in e.norms.items():
                for i, value in enumerate(values):
                    out.setdefault(f"{key}[{i}]" if several else f"v{i}", []).append((e.step, value))
        return out


def fold(view: JobView, new_events: Iterable[Event | JobEvent]) -> JobView:
    """Fold events (envelopes or bare typed events) into `view`, in order; returns the view."""
    for item in new_events:
        _apply(view, item.payload if isinstance(item, Event) else item)
        view.seen += 1
    return view


def view_of(events: Iterable[Event | JobEvent], title: str = "") -> JobView:
    """A fresh view of these events (a whole log)."""
    return fold(JobView(title=title), events)


def _apply(view: JobView, e: JobEvent) -> None:
    match e:
        case ev.Progress():
            view.progress = e
            if e.phase is None:
                view.loop = e
        case ev.Loss():
            view.losses = _by_step(view.losses, e)
            view.norms = _before(view.norms, e.step)  # those of the run that was cut short
            view.evals = _before(view.evals, e.step)
            view.scores = [s for s in view.scores if s.untrained or s.step < e.step]
            view.previews = _before(view.previews, e.step)
        case ev.Norms():
            view.norms = _by_step(view.norms, e)
        case ev.Eval():
            view.evals = _by_step(view.evals, e)
        case ev.Scores():
            # the untrained baseline is kept apart from the trained steps (it may share step 0)
            same = [s for s in view.scores if bool(s.untrained) == bool(e.untrained)]
            others = [s for s in view.scores if bool(s.untrained) != bool(e.untrained)]
            view.scores = sorted([*others, *_by_step(same, e)], key=lambda s: (not s.untrained, s.step))
        case ev.Preview():
            view.previews.append(e)
        case ev.Files():
            view.files.append(e)
        case ev.Message():
            view.notes.append(Note("message", e.text))
        case ev.Warning():
            view.notes.append(Note("warning", e.text))
        case ev.Error():
            view.error, view.error_type = e.text, e.type
            view.notes.append(Note("error", e.text))
        case ev.Result():
            view.result = e.value
        case ev.State():
            if view.done and e.state not in DONE_STATES:  # the next job of a resumed run's log
                view.progress, view.loop, view.result, view.error, view.error_type = None, None, None, None, None
            view.state = e.state
            view.ahead = e.ahead if e.state == "queued" else None
        case _:  # ev.Unknown: a kind from another version
            pass


def _by_step(series: list, e: Any) -> list:
    """Append `e`; a step that comes again (a run resumed from an earlier bundle) first drops the
    points logged for it and after it. Returns the list to keep (a new one when points drop)."""
    series = _before(series, e.step)
    series.append(e)
    return series


def _before(series: list, step: int) -> list:
    """`series` without its points at `step` or later (the same list when there are none)."""
    if series and series[-1].step >= step:
        return [x for x in series if x.step < step]
    return series


def earlier_events(job: Any) -> list[Event]:
    """The events of the jobs before `job` in its log file: a resumed run appends to the run's
    `events.jsonl`, so the file holds the earlier jobs' loss, norms and previews. The job's own
    part starts at its last `seq` 0; everything before it is history."""
    path = getattr(job, "log_path", None)
    if path is None or not path.is_file():
        return []
    logged = ev.read_log(path)
    starts = [i for i, e in enumerate(logged) if e.seq == 0]
    return logged[:starts[-1]] if starts else []


class ViewCache:
    """The views of the last few jobs asked for, each kept current by folding only the events
    past its cursor. One cache serves every viewer of a page: a view depends only on the job's
    log, not on who looks. `history=True`: a view starts from the earlier jobs of the job's log
    file (`earlier_events`), so a resumed run shows one timeline in absolute steps."""

    def __init__(self, keep: int = 4, *, history: bool = False) -> None:
        self._keep = keep
        self._history = history
        self._views: dict[str, tuple[JobView, int]] = {}  # job id -> (view, events of the job folded)
        self._lock = threading.Lock()

    def get(self, job: Any) -> JobView:
        """The view of `job` (a jobs.registry.Job) with every event it has so far."""
        with self._lock:
            view, cursor = self._views.pop(job.id, (None, 0))
            if view is None:
                view = JobView(title=job.title)
                if self._history:
                    fold(view, earlier_events(job))
            new, cursor = job.events_since(cursor)
            fold(view, new)
            self._views[job.id] = (view, cursor)  # most recently asked last
            while len(self._views) > self._keep:
                del self._views[next(iter(self._views))]
        return view
