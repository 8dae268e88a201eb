"""The run folder: everything one training run leaves on disk, and how to read it back.

```
data/runs/<run_name or <embedding>-YYYYmmdd-HHMMSS>/
  settings.json        the TrainConfig (what resume and "restore settings" read)
  loss.csv             step, epoch, loss, lr, norm_<encoder>_<vector>... (one row per optimizer step)
  events.jsonl         the job's event log (one JSON object per line)
  resume.pt            the latest resume bundle (training.checkpoint)
  original/            a copy of the embedding file the run started from (never lost)
  snapshots/           <name>-<step>.<fmt> every save_every steps
  image_embeddings/    <name>-<step>.png: previews carrying the snapshot (save_png_embeddings)
  previews/            <name>-<step>-<seed>.png with the generation parameters as a text chunk
  final/               <name>.<fmt> for every snapshot format
  eval.csv             step, eval_loss (when eval_every > 0)
  scores.csv           step, likeness, editability, untrained (CLIP scores: training.scores)
  scores/              one cached score per scored embedding and score settings
  grids/               labelled snapshot × seed / prompt grids (training.grid)
  tensorboard/         scalars (when tensorboard is on)
```

Every file is written atomically except the append-only logs (loss.csv, eval.csv, scores.csv, events.jsonl),
whose readers skip a torn last line: a kill -9 at any moment leaves every file loadable. A row
that a full disk refuses is cut back off the CSV logs (whole rows only) and raises SaveError.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.config import SCHEMA_KEY, TrainConfig
from workspace.atomic import SaveError, atomic_write_text

SETTINGS = "settings.json"
LOSS_CSV = "loss.csv"
EVAL_CSV = "eval.csv"
SCORES_CSV = "scores.csv"
EVENTS = "events.jsonl"
BUNDLE = "resume.pt"


@dataclass(frozen=True)
class RunFolder:
    path: Path

    # --- layout -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def settings_path(self) -> Path:
        return self.path / SETTINGS

    @property
    def loss_csv(self) -> Path:
        return self.path / LOSS_CSV

    @property
    def eval_csv(self) -> Path:
        return self.path / EVAL_CSV

    @property
    def scores_csv(self) -> Path:
        return self.path / SCORES_CSV

    @property
    def score_cache(self) -> Path:
        return self.path / "scores"

    @property
    def grids(self) -> Path:
        return self.path / "grids"

    @property
    def events_path(self) -> Path:
        return self.path / EVENTS

    @property
    def bundle_path(self) -> Path:
        return self.path / BUNDLE

    @property
    def snapshots(self) -> Path:
        return self.path / "snapshots"

    @property
    def previews(self) -> Path:
        return self.path / "previews"

    @property
    def image_embeddings(self) -> Path:
        return self.path / "image_embeddings"

    @property
    def final(self) -> Path:
        return self.path / "final"

    @property
    def original(self) -> Path:
        return self.path / "original"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    # --- creating -------------------------------------------------------------------------------
    @classmethod
    def create(cls, runs_dir: Path, embedding_name: str, run_name: str = "") -> "RunFolder":
        """A new folder; a name already taken gets a numeric suffix rather than mixing two runs."""
        base = run_name or f"{embedding_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(runs_dir) / base
        n = 2
        while path.exists():
            path = Path(runs_dir) / f"{base}-{n}"
            n += 1
        path.mkdir(parents=True)
        return cls(path)

    def write_settings(self, settings: dict[str, Any]) -> Path:
        """`TrainConfig.to_dict()`; settings written now are today's schema version."""
        settings = {SCHEMA_KEY: TrainConfig.SETTINGS_VERSION, **settings}
        return atomic_write_text(self.settings_path, json.dumps(settings, indent=2, ensure_ascii=False) + "\n")

    def read_settings(self) -> dict[str, Any]:
        """The saved settings under today's field names, whatever version wrote them (ConfigError
        when they cannot be read as settings). `TrainConfig.load(settings_path)` gives the config."""
        path = self.settings_path
        return TrainConfig.migrate(json.loads(path.read_text(encoding="utf-8")), source=path.name)

    # --- append-only logs -------------------------------------------------------------------------
    def append_loss(self, row: dict[str, Any]) -> None:
        _append_csv_row(self.loss_csv, row)

    def append_eval(self, step: int, loss: float) -> None:
        _append_csv_row(self.eval_csv, {"step": step, "eval_loss": loss})

    def append_scores(self, row: dict[str, Any]) -> None:
        _append_csv_row(self.scores_csv, row)

    def read_scores(self) -> list[dict[str, float]]:
        return read_csv_rows(self.scores_csv)

    def write_scores(self, rows: list[dict[str, Any]]) -> Path:
        """Replace scores.csv with `rows` (an evaluation of the whole run), atomically."""
        return atomic_write_text(self.scores_csv, _csv_text(rows))

    def read_loss(self) -> list[dict[str, float]]:
        return read_csv_rows(self.loss_csv)

    def read_eval(self) -> list[dict[str, float]]:
        return read_csv_rows(self.eval_csv)

    def truncate_logs_after(self, step: int) -> None:
        """On resume from step S, drop log rows written after the bundle (steps > S) so the
        history reads as one continuous run. Rewritten atomically."""
        for path in (self.loss_csv, self.eval_csv, self.scores_csv):
            rows = read_csv_rows(path)
            if not rows:
                continue
            keep = [r for r in rows if r["step"] <= step]
            if len(keep) == len(rows) and _ends_cleanly(path):
                continue
            atomic_write_text(path, _csv_text(keep, list(rows[0].keys())))

    def read_events(self) -> list[dict[str, Any]]:
        out = []
        if not self.events_path.is_file():
            return out
        for line in self.events_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line after a kill
        return out

    # --- files ------------------------------------------------------------------------------------
    def snapshot_files(self) -> list[Path]:
        return sorted(p for p in self.snapshots.glob("*") if p.is_file() and not p.name.startswith("."))

    def preview_files(self) -> list[Path]:
        return sorted(p for p in self.previews.glob("*.png") if not p.name.startswith("."))

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for lists of runs (UI, CLI)."""
        info: dict[str, Any] = {"name": self.name, "path": str(self.path)}
        try:
            settings = self.read_settings()
            info.update(embedding=settings.get("embedding"), model=settings.get("model"),
                        dataset=settings.get("dataset"))
        except (OSError, ValueError):
            info["problem"] = "settings.json missing or unreadable"
        rows = self.read_loss()
        info["last_step"] = int(rows[-1]["step"]) if rows else None
        info["last_loss"] = rows[-1]["loss"] if rows else None
        info["resumable"] = self.bundle_path.is_file()
        info["modified"] = self.path.stat().st_mtime if self.path.exists() else None
        return info


def list_runs(runs_dir: Path) -> list[RunFolder]:
    """Run folders (those with settings.json), newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [RunFolder(p) for p in runs_dir.iterdir() if (p / SETTINGS).is_file()]
    return sorted(found, key=lambda r: r.settings_path.stat().st_mtime, reverse=True)


def find_run(spec: str | Path, runs_dir: Path) -> RunFolder:
    """The run folder `spec` means: a folder path, else a run name under `runs_dir`.
    FileNotFoundError naming both places when neither holds a settings.json."""
    given = Path(str(spec).strip()).expanduser()
    for folder in (given, Path(runs_dir) / given):
        if (folder / SETTINGS).is_file():
            return RunFolder(folder)
    raise FileNotFoundError(f"run {str(spec)!r}: no run folder (with {SETTINGS}) there nor in {runs_dir}")


def read_csv_rows(path: Path) -> list[dict[str, float]]:
    """Rows as floats; a torn or malformed line (a kill mid-append) is skipped, never fatal."""
    if not Path(path).is_file():
        return []
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split(",")
    rows = []
    for line in lines[1:]:
        parts = line.split(",")
        if len(parts) != len(header):
            continue
        try:
            row = {k: float(v) for k, v in zip(header, parts, strict=True)}
        except ValueError:
            continue
        row["step"] = int(row["step"])
        rows.append(row)
    return rows


def _append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """One `write` per row on an O_APPEND descriptor: a kill leaves at worst one torn last line,
    which the reader skips. The header is written with the first row.

    A write that fails or stops short (a full disk) is cut back to the file's old size, so the
    log keeps whole rows only, and raises `SaveError` naming the file."""
    line = ",".join(_fmt(v) for v in row.values()) + "\n"
    if not path.exists() or path.stat().st_size == 0:
        line = ",".join(row.keys()) + "\n" + line
    elif not _ends_cleanly(path):
        line = "\n" + line  # finish a torn line from a killed run so the new row stays whole
    data = line.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as e:
        raise SaveError.from_os_error(path, e) from e
    try:
        size = os.fstat(fd).st_size
        written = 0
        try:
            while written < len(data):  # a short write near the limit; the next one says why
                written += os.write(fd, data[written:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise SaveError.from_os_error(path, e) from e
    finally:
        os.close(fd)


def _csv_text(rows: list[dict[str, Any]], fields: list[str] | None = None) -> str:
    fields = fields or (list(rows[0].keys()) if rows else [])
    if not fields:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(v) for k, v in r.items()})
    return buf.getvalue()


def _ends_cleanly(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"
    except OSError:
        return True


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.8g}"
    return str(v)
