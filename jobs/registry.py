"""Jobs, their event logs, and the single worker thread that runs them in order."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from jobs import events
from jobs.events import Event, JobEvent

log = logging.getLogger(__name__)


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"

    @property
    def done(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED, JobState.INTERRUPTED)


class JobInterrupted(Exception):
    """Raised by a job function that honoured a stop request (after saving what it must)."""


JobFn = Callable[["Job"], Any]


@dataclass
class Job:
    id: str
    kind: str
    title: str
    fn: JobFn | None = None
    state: JobState = JobState.QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    result: Any = None
    error: str | None = None
    log_path: Path | None = None
    _events: list[Event] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _write: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _changed: threading.Condition = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self._changed = threading.Condition(self._lock)

    # --- writing (the job function) -------------------------------------------------------
    def emit(self, event: JobEvent | str, /, **data: Any) -> Event:
        """Append a typed event (jobs.events) to the log: `job.emit(events.Loss(step=1, ...))`.

        The older form `emit("loss", step=1, ...)` still works for code not yet converted: it is
        turned into the typed event by `events.from_data`, so a wrong kind or field fails here,
        at the writer, instead of in a reader."""
        if isinstance(event, str):
            event = events.from_data(event, data, strict=True)
        elif data:
            raise TypeError("emit(event) takes no keyword fields with a typed event")
        # One writer at a time, so the file's lines are in `seq` order; readers only wait for
        # the short in-memory append, never for the disk.
        with self._write:
            with self._lock:
                ev = Event(seq=len(self._events), time=time.time(), payload=event)
                self._events.append(ev)
                self._changed.notify_all()
            if self.log_path is not None:
                _append_line(self.log_path, ev.to_json() + "\n")
        return ev

    def message(self, text: str) -> None:
        self.emit(events.Message(text))

    def warning(self, text: str) -> None:
        self.emit(events.Warning(text))

    def progress(self, done: int, total: int, **extra: Any) -> None:
        """`extra`: the other `events.Progress` fields (step, it_s, eta_s, epoch, phase, file)."""
        self.emit(events.Progress(done, total, **extra))

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def check_stop(self) -> None:
        """Cooperative interrupt point for loops that have nothing to save."""
        if self._stop.is_set():
            raise JobInterrupted()

    # --- reading (UI, CLI, tests) -------------------------------------------------------------
    def events_since(self, cursor: int = 0) -> tuple[list[Event], int]:
        with self._lock:
            evs = self._events[cursor:]
            return evs, cursor + len(evs)

    def wait_events(self, cursor: int, timeout: float = 1.0) -> tuple[list[Event], int]:
        """Block until there is an event past `cursor` or the job is done (or timeout)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._events) > cursor or self.state.done, timeout=timeout)
        return self.events_since(cursor)

    def events(self, kind: str | type | None = None) -> list[Event]:
        """The log so far, or only the events of one kind (its name or its class: `events.Loss`)."""
        kind = _kind_name(kind)
        with self._lock:
            return [e for e in self._events if kind is None or e.kind == kind]

    def last(self, kind: str | type) -> Event | None:
        kind = _kind_name(kind)
        with self._lock:
            for e in reversed(self._events):
                if e.kind == kind:
                    return e
        return None

    def request_stop(self) -> None:
        self._stop.set()
        if self.state == JobState.QUEUED:
            self._set_state(JobState.INTERRUPTED)

    def wait(self, timeout: float | None = None) -> JobState:
        deadline = None if timeout is None else time.time() + timeout
        with self._changed:
            while not self.state.done:
                left = None if deadline is None else deadline - time.time()
                if left is not None and left <= 0:
                    break
                self._changed.wait(timeout=left if left is not None else 1.0)
        return self.state

    def _set_state(self, state: JobState) -> None:
        with self._lock:
            self.state = state
            if state == JobState.RUNNING:
                self.started = time.time()
            if state.done:
                self.ended = time.time()
        self.emit(events.State(state.value))

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "state": self.state.value,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "error": self.error,
        }


class JobRegistry:
    """Holds every job of this process and runs them one at a time on one daemon thread."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[str] = []
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self.current: Job | None = None

    def submit(self, kind: str, title: str, fn: JobFn, *, log_path: Path | None = None) -> Job:
        job = Job(id=f"{kind}-{next(self._ids)}-{int(time.time())}", kind=kind, title=title, fn=fn, log_path=log_path)
        with self._lock:
            self._jobs[job.id] = job
            self._order.append(job.id)
            ahead = sum(1 for j in self._jobs.values() if j is not job and not j.state.done)
        job.emit(events.State(JobState.QUEUED.value, ahead=ahead))
        self._queue.put(job)
        self._ensure_thread()
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def jobs(self, kind: str | None = None) -> list[Job]:
        with self._lock:
            return [self._jobs[i] for i in self._order if kind is None or self._jobs[i].kind == kind]

    def latest(self, kind: str | None = None) -> Job | None:
        js = self.jobs(kind)
        return js[-1] if js else None

    def active(self) -> list[Job]:
        return [j for j in self.jobs() if not j.state.done]

    def shutdown(self, timeout: float = 10.0) -> None:
        for j in self.active():
            j.request_stop()
        self._queue.put(None)
        if self._thread:
            self._thread.join(timeout)

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ti-worker", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if job.state.done:  # stopped while queued
                continue
            self.current = job
            run_job(job)
            self.current = None


def run_job(job: Job) -> None:
    """Run a job's function in the calling thread, turning its outcome into state and events.

    The CLI uses this directly (no thread needed); the worker uses it for queued jobs.
    """
    job._set_state(JobState.RUNNING)
    try:
        job.result = job.fn(job) if job.fn else None
        if job.result is not None:
            job.emit(events.Result(job.result))
        job._set_state(JobState.INTERRUPTED if job.stop_requested else JobState.FINISHED)
    except JobInterrupted:
        job._set_state(JobState.INTERRUPTED)
    except Exception as e:  # the job's own failure; the worker must keep going
        job.error = str(e) or e.__class__.__name__
        log.warning("job %s failed: %s", job.id, job.error)
        log.debug("job %s traceback:\n%s", job.id, traceback.format_exc())
        job.emit(events.Error(job.error, type=e.__class__.__name__))
        job._set_state(JobState.FAILED)


def _kind_name(kind: str | type | None) -> str | None:
    return kind if kind is None or isinstance(kind, str) else kind.kind


def _append_line(path: Path, line: str) -> None:
    """Append one whole line or nothing: a failed write (full disk) is cut back off so the next
    event does not land on a torn line. The in-memory log keeps every event either way."""
    data = line.encode("utf-8")
    try:
        with open(path, "ab", buffering=0) as f:
            start = f.seek(0, 2)
            try:
                if f.write(data) != len(data):
                    raise OSError(28, "short write (disk full?)")
            except OSError:
                f.truncate(start)
                raise
    except OSError as e:  # a full disk must not kill the run
        log.warning("cannot append to %s: %s", path, e)
