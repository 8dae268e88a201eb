"""What a job reports, as typed values, and the JSON-lines log they are kept in.

A job function emits these (`job.emit(events.Loss(step=..., ...))`); the registry adds `State`,
`Result` and `Error` itself. Readers (the web UI, the CLI, tests) get them back in an `Event`
envelope that adds the sequence number and the time, and fold them into the current view of the
job with `jobs.view`.

One event is one line of the job's `events.jsonl`:

    {"seq": 14, "time": 1796013606.28, "kind": "loss", "data": {"step": 1, "loss": 0.92, ...}}

`kind` names the class below and `data` holds its fields (those left at None are not written).
That format is older than these classes and stays as it is, so logs of earlier runs still read:
`from_data` ignores keys it does not know, and a kind it does not know (or a record that does not
fit its kind) comes back as `Unknown` rather than an exception, for readers to skip.

The `Warning` and `Error` classes shadow Python's built-in names inside this module only; use
them qualified (`events.Warning`) elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """How far the job is. Training: `done`/`total` count optimizer steps in this run (a resumed
    run starts again at 0), `step` is the absolute step, `phase` is "loading" (the base model),
    "latents" (the latent cache is built), "preview" (previews of `step`: `done` of `total`), or
    None in the loop. Preprocessing: `file` is the source just handled."""

    kind: ClassVar[str] = "progress"
    done: int
    total: int
    step: int | None = None
    it_s: float | None = None
    eta_s: float | None = None
    epoch: int | None = None
    phase: str | None = None
    file: str | None = None


@dataclass(frozen=True)
class Loss:
    """One optimizer step: its loss (mean over accumulation), learning rate and the EMA of the loss."""

    kind: ClassVar[str] = "loss"
    step: int
    loss: float
    lr: float
    smoothed: float
    epoch: int | None = None


@dataclass(frozen=True)
class Norms:
    """The L2 norm of each learned vector, per text encoder: {"clip_l": (0.14, 0.15), ...}.

    An embedding with one set per layer group (the per-layer kind) also sends `layers`: per
    encoder, per group, the norm of each vector (a groups x vectors grid: the heat map); `norms`
    is then its standard part (what other tools load)."""

    kind: ClassVar[str] = "norms"
    step: int
    norms: dict[str, tuple[float, ...]]
    layers: dict[str, tuple[tuple[float, ...], ...]] | None = None

    def __post_init__(self) -> None:
        # Tuples of floats whatever came in (lists from JSON, tensors' tolist()), so an event read
        # back from the log equals the one emitted.
        object.__setattr__(self, "norms", {str(k): tuple(float(x) for x in v) for k, v in dict(self.norms).items()})
        if self.layers is not None:
            object.__setattr__(self, "layers", {str(k): tuple(tuple(float(x) for x in row) for row in grid)
                                                for k, grid in dict(self.layers).items()})


@dataclass(frozen=True)
class Eval:
    """The deterministic evaluation loss at a step (training.evaluate)."""

    kind: ClassVar[str] = "eval"
    step: int
    loss: float


@dataclass(frozen=True)
class Scores:
    """CLIP scores of the embedding at a step (training.scores): likeness to the training images
    and editability. `untrained`: the run's starting embedding, the baseline of the best-step rule."""

    kind: ClassVar[str] = "scores"
    step: int
    likeness: float
    editability: float
    untrained: bool | None = None


@dataclass(frozen=True)
class Preview:
    """A preview image written to `path`, rendered from `prompt` with `seed`."""

    kind: ClassVar[str] = "preview"
    step: int
    path: str
    prompt: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))


@dataclass(frozen=True)
class Files:
    """Files written, and what they are (one of the names below). `step` is None for the run folder."""

    kind: ClassVar[str] = "files"
    RUN_FOLDER: ClassVar[str] = "run folder"
    SNAPSHOT: ClassVar[str] = "snapshot"
    PNG_EMBEDDING: ClassVar[str] = "png embedding"
    FINAL: ClassVar[str] = "final"
    paths: tuple[str, ...]
    what: str
    step: int | None = None

    def __post_init__(self) -> None:
        paths = (self.paths,) if isinstance(self.paths, (str, Path)) else self.paths
        object.__setattr__(self, "paths", tuple(str(p) for p in paths))


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str] = "message"
    text: str


@dataclass(frozen=True)
class Warning:  # the event's name; used qualified outside this module
    """Something the person should know that did not stop the job (a skipped step or image, a
    file that could not be written, not learning)."""

    kind: ClassVar[str] = "warning"
    text: str


@dataclass(frozen=True)
class State:
    """The job's state changed (jobs.registry.JobState's value). `ahead`: jobs queued before it."""

    kind: ClassVar[str] = "state"
    state: str
    ahead: int | None = None


@dataclass(frozen=True)
class Result:
    """The job function's return value (JSON-able), just before the final state."""

    kind: ClassVar[str] = "result"
    value: Any


@dataclass(frozen=True)
class Error:
    """The job failed: the message and the exception's class name."""

    kind: ClassVar[str] = "error"
    text: str
    type: str = ""


@dataclass(frozen=True)
class Unknown:
    """A record of a kind this version does not know, or one that does not fit its kind: kept
    as read, so a log from another version never stops a reader; views skip it."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return dict(self.data)


JobEvent = (Progress | Loss | Norms | Eval | Scores | Preview | Files | Message | Warning | State | Result | Error
            | Unknown)
KINDS: dict[str, type] = {c.kind: c for c in (Progress, Loss, Norms, Eval, Scores, Preview, Files, Message, Warning,
                                               State, Result, Error)}


def to_data(event: JobEvent) -> dict[str, Any]:
    """The `data` object of the event's log line: its fields, leaving out those that are None."""
    if isinstance(event, Unknown):
        return event.to_data()
    out = {}
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        if value is None and f.default is None:
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, dict):
            value = {k: list(v) if isinstance(v, tuple) else v for k, v in value.items()}
        out[f.name] = value
    return out


def from_data(kind: str, data: dict[str, Any], *, strict: bool = False) -> JobEvent:
    """The typed event for a log record. Lenient by default (reading logs): unknown keys are
    dropped, and an unknown kind or a record missing a field becomes `Unknown`. `strict` (for
    `Job.emit(kind, **data)`, i.e. code that writes events) raises TypeError naming the problem."""
    cls = KINDS.get(kind)
    if cls is None:
        if strict:
            raise TypeError(f"unknown job event kind {kind!r}; known: {', '.join(KINDS)}")
        return Unknown(kind, dict(data))
    names = {f.name for f in dataclasses.fields(cls)}
    extra = set(data) - names
    if extra and strict:
        raise TypeError(f"{kind} event: unexpected field(s) {', '.join(sorted(extra))}; "
                        f"{cls.__name__} has {', '.join(sorted(names))}")
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except (TypeError, ValueError) as e:
        if strict:
            raise TypeError(f"{kind} event: {e}") from None
        log.debug("unreadable %s event %r: %s", kind, data, e)
        return Unknown(kind, dict(data))


@dataclass(frozen=True)
class Event:
    """One entry of a job's log: the typed event with its place (`seq`, per job) and time."""

    seq: int
    time: float
    payload: JobEvent

    @property
    def kind(self) -> str:
        return self.payload.kind

    @property
    def data(self) -> dict[str, Any]:
        """The event's fields as a plain dict (the log's `data` object)."""
        return to_data(self.payload)

    def to_json(self) -> str:
        return json.dumps({"seq": self.seq, "time": self.time, "kind": self.kind, "data": self.data}, default=str)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Event:
        data = record.get("data")
        return cls(seq=int(record.get("seq", -1)), time=float(record.get("time", 0.0)),
                   payload=from_data(str(record.get("kind", "")), data if isinstance(data, dict) else {}))


def read_log(path: Path) -> list[Event]:
    """Every event of an `events.jsonl` in file order (a resumed run's log holds several jobs,
    each counting `seq` from 0). Lines that do not parse (a torn last line after a kill) are
    skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(Event.from_record(record))
    return out
