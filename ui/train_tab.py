"""Train tab: the TrainConfig form, Start / Interrupt / Resume, and the live view of a run.

The form is generated from `TrainConfig`'s fields, so a new option appears here (in "Advanced")
the day the training engineers add it, and what the form fills is exactly what the CLI reads.
The live view reads the job's event log by cursor, folded into the job's view (jobs.view, the same
view `app.py train` prints): the run belongs to the server, not to the page, so reloading or opening
a second tab re-attaches to it. The page polls it with a small script (static/train_live.js) rather
than a gr.Timer: a Gradio event a second cost the browser a tenth of a core, which a training run
on a small machine feels. The script writes the status, bar, log, heat map and chart points into
the page itself, and asks Gradio for the gallery and downloads only when a preview or file is added.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import itertools
import json
import logging
import math
import typing
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from jobs import events
from jobs.view import JobView, ViewCache, view_of
from training.config_text import FIELD_TEXT
from training.memory import preflight_text
from ui.common import FieldText, fail, field_text, fmt_seconds, grouped_fields, short, user_errors, widget_for_field
from ui.layer_heatmap import heatmap_html
from ui.state import AppContext

log = logging.getLogger(__name__)

# The Advanced accordion by topic. A TrainConfig field in no group lands in "Other", so a new
# option still shows up the day it is added.
ADVANCED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Data", ("bucketing", "no_upscale", "shuffle_tags", "alpha_weight", "repeats", "flip_p", "latent_sampling",
              "keep_tags", "tag_dropout", "bucket_step", "min_bucket", "max_bucket", "filename_regex",
              "join_string")),
    ("Optimizer & schedule", ("more_steps", "warmup_steps", "min_lr", "grad_accum", "optimizer", "weight_decay",
                              "clip_mode", "clip_value", "seed")),
    ("Text encoder & vectors", ("vector_shuffle", "shuffle_prob", "clip_skip", "density_weight")),
    ("Precision & speed", ("gradient_checkpointing", "mixed_precision")),
    ("Previews", ("preview_first", "preview_prompts", "preview_steps", "preview_cfg", "preview_scheduler",
                  "preview_width", "preview_height", "preview_seeds", "preview_negative")),
    ("Evaluation & health", ("tensorboard", "eval_every", "eval_images", "nan_patience", "not_learning_steps",
                             "not_learning_threshold")),
    ("CLIP scores & auto-stop", ("score_every", "clip_model", "score_prompts", "edit_prompts", "class_word",
                                 "score_seeds", "score_steps", "best_threshold", "auto_stop", "auto_stop_patience")),
    ("Snapshots", ("save_png_embeddings", "snapshot_formats", "run_name")),
)
TEXTS: dict[str, FieldText] = {key: FieldText(*text) for key, text in FIELD_TEXT.items()}
# How often the page polls (static/train_live.js); it redraws charts at most every 3 s. Each poll
# costs the server ~30 ms of CPU (Gradio's /run route) beside the training thread, so on a 2-core
# box 1 s left training at ~96% of headless speed and 2 s at ~98% (benchmarks/bench_ui_polling.py
# --synthetic); the page asks at once after Start, Interrupt and Resume, so a click still shows now.
POLL_SECONDS = 2.0
MAX_PLOT_POINTS = 1500
POKE = "() => { window.tiLive && window.tiLive.tick(); }"  # poll now: the click's effect shows at once


def _choices() -> dict[str, tuple[str, ...]]:
    from training import config as c

    return {"lr_kind": c.LR_KINDS, "clip_mode": c.CLIP_MODES, "optimizer": c.OPTIMIZERS,
            "latent_sampling": c.LATENT_SAMPLING, "mixed_precision": c.MIXED_PRECISION,
            "vector_shuffle": c.VECTOR_SHUFFLE, "preview_scheduler": c.PREVIEW_SCHEDULERS, "auto_stop": c.AUTO_STOP}


def _fields() -> list[tuple[str, Any, Any]]:
    """(name, type hint, default) of every TrainConfig field, in order."""
    from training.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, hints[f.name], default))
    return out


def _component(name: str, hint: Any, default: Any, **kwargs: Any) -> gr.components.Component:
    text = field_text(name, TEXTS)
    choices = _choices()
    if name == "snapshot_formats":
        from training.config import SNAPSHOT_FORMATS

        choices = {name: SNAPSHOT_FORMATS}
    return widget_for_field(name, hint, default, label=text.label, info=text.info, choices=choices.get(name),
                            elem_id=f"train_{name}", **kwargs)


def form_values_to_config(names: list[str], values: list[Any]):
    """Turn what the widgets hold into a validated TrainConfig (errors name the setting)."""
    from training.config import TrainConfig

    hints = {n: h for n, h, _ in _fields()}
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        hint = hints[name]
        if typing.get_origin(hint) is list:
            (item,) = typing.get_args(hint)
            if isinstance(value, list):
                out[name] = value
            elif item is int:
                try:
                    out[name] = [int(v) for v in str(value or "").replace(";", ",").split(",") if v.strip()]
                except ValueError:
                    raise ValueError(f"{name}: write whole numbers separated by commas, e.g. 0, 1") from None
            else:
                out[name] = [line.strip() for line in str(value or "").splitlines() if line.strip()]
        elif hint is int:
            if value is None or (isinstance(value, float) and not math.isfinite(value)):
                raise ValueError(f"{name}: a whole number is needed")
            out[name] = int(value)
        elif hint is float:
            out[name] = float(value if value is not None else 0.0)
        elif hint is str:
            out[name] = "" if value is None else str(value)
        else:
            out[name] = value
    return TrainConfig.from_dict(out)


def config_to_form_values(names: list[str], settings: dict[str, Any]) -> list[Any]:
    """The reverse: saved settings -> widget values (fields it lacks keep their default)."""
    defaults = {n: d for n, _, d in _fields()}
    hints = {n: h for n, h, _ in _fields()}
    vals = []
    for name in names:
        v = settings.get(name, defaults[name])
        if name != "snapshot_formats" and typing.get_origin(hints[name]) is list:
            v = ", ".join(str(x) for x in v) if typing.get_args(hints[name])[0] is int else "\n".join(map(str, v))
        vals.append(v)
    return vals


# --- helpers for the widgets around the form -------------------------------------------------------------
def schedule_plot(lr: str, kind: str, max_steps: float, warmup: float | None = 0, min_lr: float | None = 0.0):
    """(DataFrame of (step, lr), inline message). Errors show as text, the plot empties."""
    from training.schedule import ScheduleError, build_schedule

    empty = pd.DataFrame({"step": [], "lr": []})
    try:
        sched = build_schedule(kind, str(lr), max(1, int(max_steps or 1)), 0, int(warmup or 0), float(min_lr or 0.0))
    except ScheduleError as e:
        return empty, f"**Learning rate:** {e}"
    except (TypeError, ValueError) as e:
        return empty, f"**Learning rate:** {e}"
    pts = sched.points()
    notes = "; ".join(getattr(sched, "notes", []) or [])
    msg = f"Training stops at step {sched.end_step}." + (f" Note: {notes}" if notes else "")
    return pd.DataFrame(pts, columns=["step", "lr"]), msg


def template_preview(ctx: AppContext, template: str, embedding: str, dataset: str, n: int = 6) -> str:
    from training.templates import TemplateError, load_template, render

    if not template:
        return ""
    try:
        lines = load_template(template, ctx.data.templates)
    except TemplateError as e:
        return f"**Template:** {e}"
    captions = _sample_captions(ctx, dataset, n)
    name = embedding or "[name]"
    out = []
    for i, line in enumerate(lines[:n]):
        out.append(f"- `{render(line, name, captions[i % len(captions)] if captions else '')}`")
    more = f"\n\n…and {len(lines) - n} more lines" if len(lines) > n else ""
    return f"**Sample prompts** ({len(lines)} template lines):\n" + "\n".join(out) + more


def _sample_captions(ctx: AppContext, dataset: str, n: int) -> list[str]:
    folder = _dataset_path(ctx, dataset)
    if folder is None:
        return []
    caps = []
    for p in sorted(folder.glob("*.txt"))[:n]:
        try:
            caps.append(p.read_text(encoding="utf-8").strip())
        except OSError:
            continue
    return caps


def _dataset_path(ctx: AppContext, dataset: str) -> Path | None:
    try:
        return ctx.data.find_dataset(dataset)
    except FileNotFoundError:
        return None


def dataset_report(ctx: AppContext, dataset: str, embedding: str, template: str,
                   resolution: float | None = None) -> tuple[str, str]:
    """The dataset check as (one summary line, details in Markdown), or a one-line problem. The
    sample prompts are left to the template preview, so they are not listed twice."""
    folder = _dataset_path(ctx, dataset)
    if folder is None:
        return ("Pick a dataset (make one in the Preprocess tab)." if not dataset
                else f"**{dataset}:** no such folder"), ""
    from training.dataset import DataOptions, check_dataset

    try:
        opts = DataOptions(**{k: v for k, v in (("template", template), ("resolution", int(resolution or 0)))
                              if v})
        report = check_dataset(folder, opts, name=embedding or "", tokenizer=ctx.tokenizer(),
                               templates_dir=ctx.data.templates)
    except (ValueError, OSError) as e:
        return f"**Dataset problem:** {short(str(e))}", ""
    lines = [line for line in report.describe() if not line.startswith("prompt: ")]
    summary = lines[0] + "".join(f" · **{line}**" for line in lines[1:] if line.startswith("problem: "))
    return summary, "\n".join(f"- {short(line, 200)}" for line in lines[1:])


# --- the live view -------------------------------------------------------------------------------------------
def live_slot(slot_id: str, inner: str, css_class: str = "", **data: Any) -> str:
    """A place in the page that the poller (static/train_live.js) writes into by its id."""
    attrs = "".join(f' data-{k.replace("_", "-")}="{html.escape(str(v))}"' for k, v in data.items())
    return f'<div id="{slot_id}" class="ti-live {css_class}"{attrs}>{inner}</div>'


@dataclass
class LiveView:
    status: str
    progress: float
    loss: dict[str, list[tuple[int, float]]]
    norms: dict[str, list[tuple[int, float]]]
    previews: list[tuple[str, str]]
    log: str
    downloads: list[str]
    running: bool


def current_job(ctx: AppContext):
    """The training job to show: the running or queued one, else the latest."""
    jobs = ctx.registry.jobs("train")
    active = [j for j in jobs if not j.state.done]
    if active:
        return active[0]
    return jobs[-1] if jobs else None


def queue_note(ctx: AppContext, shown) -> str:
    """The other training jobs beside the one shown (running or queued), so every tab sees the
    whole queue: two tabs that pressed Start at once, and a third that only watches."""
    others = [j for j in ctx.registry.jobs("train") if not j.state.done and j is not shown]
    if not others:
        return ""
    return "\n\nAlso in the queue: " + "; ".join(f"**{j.title}** ({j.state.value})" for j in others)


NO_RUN = "No training run yet."


def live_view(view: JobView | None) -> LiveView:
    """Everything the page shows about a run, drawn from the one folded view of its events."""
    if view is None:
        return LiveView(NO_RUN, 0.0, {}, {}, [], "", [], False)
    return LiveView(status_markdown(view), view.fraction, loss_points(view), view.norm_series(), preview_items(view),
                    log_html(view), downloads(view), not view.done)


def status_markdown(view: JobView) -> str:
    """One line: the job, its state and phase, the absolute step of the run (a resumed run counts
    on from where it stopped), speed and time left; then why it did nothing or failed."""
    text = f"**{view.title}** — {view.state}"
    if view.state == "queued":
        text += f" (waiting for {view.ahead or 1} job(s) ahead to finish)"
    activity = view.activity()
    if activity and activity != "training":
        text += f" · {activity}"
    p, end = view.loop, view.end_step
    if p is not None and end is not None:
        text += f" · step {view.step}/{end}" + (f" · {p.it_s:.2f} it/s" if p.it_s is not None else "")
        if not view.done:
            text += f" · ETA {fmt_seconds(p.eta_s)}"
    if view.reason:
        text += f"\n\n**Nothing trained:** {short(view.reason)}"
    if view.error:
        text += f"\n\n**Failed:** {short(view.error)}"
    return text


LOG_LINES = 200


def log_html(view: JobView) -> str:
    """The job's messages, warnings and errors, newest first, warnings and errors marked."""
    if not view.notes:
        return ""
    marks = {"warning": ("ti-warn", "⚠ "), "error": ("ti-err", "✖ ")}
    rows = []
    for note in list(reversed(view.notes))[:LOG_LINES]:
        cls, mark = marks.get(note.level, ("ti-msg", ""))
        rows.append(f'<li class="{cls}">{mark}{html.escape(short(note.text, 500))}</li>')
    return f'<ul class="ti-log">{"".join(rows)}</ul>'


def loss_points(view: JobView) -> dict[str, list[tuple[int, float]]]:
    series = view.loss_series()
    out = {name: series[name] for name in ("loss", "smoothed")}
    if series["eval"]:
        out["eval"] = series["eval"]
    return out


class Column(Sequence):
    """One chart series read straight from the view's event list (`point` picks (step, value) from
    an event), so a poll that sends the few new points costs the few points, not the whole run:
    building every series afresh once a second grew with the run (15 ms a poll at 5,000 steps)."""

    def __init__(self, items: Sequence[Any], point: Callable[[Any], tuple[int, float]]) -> None:
        self._items, self._point = items, point

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self._point(e) for e in self._items[index]]
        return self._point(self._items[index])


def chart_columns(view: JobView | None) -> tuple[dict[str, Column], dict[str, Column]]:
    """(loss series, norm series) as Columns, named as loss_points and JobView.norm_series name
    them; the norm series follow the vectors of the latest Norms event."""
    if view is None:
        return {}, {}
    loss = {"loss": Column(view.losses, lambda e: (e.step, e.loss)),
            "smoothed": Column(view.losses, lambda e: (e.step, e.smoothed))}
    if view.evals:
        loss["eval"] = Column(view.evals, lambda e: (e.step, e.loss))
    norms: dict[str, Column] = {}
    if view.norms:
        latest = view.norms[-1].norms
        several = len(latest) > 1
        for key, values in latest.items():
            for i in range(len(values)):
                norms[f"{key}[{i}]" if several else f"v{i}"] = Column(
                    view.norms, lambda e, key=key, i=i: (e.step, _nth(e.norms.get(key, ()), i)))
    return loss, norms


def _nth(values: Sequence[float], i: int) -> float:
    return values[i] if i < len(values) else math.nan


GALLERY_PREVIEWS = 24


def preview_items(view: JobView) -> list[tuple[str, str]]:
    """The gallery: the run's first round of previews (what training started from, e.g. the
    untrained embedding's) and then the latest ones, GALLERY_PREVIEWS in all, oldest first, each
    captioned step · seed · prompt (a row of seeds at one step reads across)."""
    previews = view.previews
    first = list(itertools.takewhile(lambda p: p.step == previews[0].step, previews))
    if len(previews) > GALLERY_PREVIEWS and len(first) < GALLERY_PREVIEWS // 2:
        previews = first + previews[len(first) - GALLERY_PREVIEWS:]
    else:
        previews = previews[-GALLERY_PREVIEWS:]
    return [(p.path, " · ".join(part for part in (f"step {p.step}", "" if p.seed is None else f"seed {p.seed}",
                                                   p.prompt) if part))
            for p in previews]


def downloads(view: JobView) -> list[str]:
    """The latest file of each format written so far (snapshots, PNG embeddings, the final ones),
    leaving out the resume bundle, which is not an embedding."""
    latest: dict[str, str] = {}
    for files in view.files:
        if files.what == events.Files.RUN_FOLDER:
            continue
        for p in files.paths:
            if Path(p).name != BUNDLE and Path(p).is_file():
                latest[Path(p).suffix.lower()] = p
    return list(latest.values())


BUNDLE = "resume.pt"  # training.run_folder.BUNDLE, kept here so the view needs no torch import


def _thin(rows: list, limit: int = MAX_PLOT_POINTS) -> list:
    if len(rows) <= limit:
        return rows
    stride = math.ceil(len(rows) / limit)
    return rows[::stride] + [rows[-1]]


def progress_html(fraction: float, failed: bool = False) -> str:
    """The progress bar; a failed job's bar is red, so a full bar never reads as success."""
    pct = max(0.0, min(1.0, fraction)) * 100
    color = "#dc2626" if failed else "var(--color-accent)"
    return (f'<div class="ti-progress" style="background:var(--neutral-200);border-radius:4px;height:10px"'
            f'{" title=failed" if failed else ""}>'
            f'<div style="width:{pct:.1f}%;background:{color};height:10px;border-radius:4px"></div></div>')


@dataclass
class Sent:
    """What one browser tab has been sent of one job, so a poll sends only what changed: chart
    points past the last step sent, and the other outputs only when they differ. The page keeps
    it as an opaque cursor (`to_text`) and hands it back with every poll, so the answer is a pure
    function of (the job's view, the cursor) and a reloaded page (empty cursor) gets everything."""

    job: str = ""
    # series -> (points sent, the last point sent): a series whose point there differs went back
    points: dict[str, tuple[int, tuple[int, float | None] | None]] = dataclasses.field(default_factory=dict)
    status: int = -1  # digest of the status line shown
    bar: int = -1  # digest of the progress bar shown
    log: int = -1  # notes shown
    previews: int = -1
    files: int = -1
    heat: tuple[str, int] | None = None  # (job, step) of the heat map shown; None: none shown

    def to_text(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_text(cls, text: str | None) -> Sent:
        """The cursor a page sent back; anything unreadable (a new page: "") is a fresh one, which
        makes the next answer resend everything."""
        try:
            raw = json.loads(text or "{}")
            points = {str(k): (int(n), None if last is None else (int(last[0]), last[1]))
                      for k, (n, last) in raw.get("points", {}).items()}
            heat = raw.get("heat")
            return cls(job=str(raw.get("job", "")), points=points, status=int(raw.get("status", -1)),
                       bar=int(raw.get("bar", -1)), log=int(raw.get("log", -1)),
                       previews=int(raw.get("previews", -1)), files=int(raw.get("files", -1)),
                       heat=None if heat is None else (str(heat[0]), int(heat[1])))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            return cls()


def chart_delta(sent: Sent, job_id: str, loss: Mapping[str, Sequence[tuple[int, float]]],
                norms: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, Any] | None:
    """The chart points this tab has not got yet, as {"job", "reset", "loss": {series: points},
    "norms": {...}}; None when there are none. A series that went back (a resumed run logged a
    step again) or a new job resets the page's charts and sends them whole (thinned)."""
    reset = sent.job != job_id
    for name, points in (*loss.items(), *norms.items()):
        count, last = sent.points.get(name, (0, None))
        if count and (len(points) < count or _point(points[count - 1]) != last):
            reset = True
    if reset:
        sent.job, sent.points = job_id, {}
    out: dict[str, Any] = {"job": job_id, "reset": reset, "loss": {}, "norms": {}}
    share = max(2, MAX_PLOT_POINTS // max(1, len(loss) + len(norms)))
    for chart, series in (("loss", loss), ("norms", norms)):
        for name, points in series.items():
            count, _ = sent.points.get(name, (0, None))
            new = points[count:]
            if not new:
                continue
            out[chart][name] = [[s, _finite(v)] for s, v in (_thin(new, share) if reset else new)]
            sent.points[name] = (len(points), _point(points[-1]))
    return out if reset or out["loss"] or out["norms"] else None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _point(point: tuple[int, float]) -> tuple[int, float | None]:
    """A chart point as the cursor keeps it: a non-finite value as None, so it compares equal to
    itself after the trip through the page (NaN != NaN would reset the charts every poll)."""
    return int(point[0]), _finite(float(point[1]))


def status_html(text: str) -> str:
    """The status line's few Markdown marks (**bold**, blank-line paragraphs) as HTML, the rest
    escaped: the page writes it as it is, no Markdown renderer in between."""
    paragraphs = []
    for para in text.split("\n\n"):
        parts = html.escape(para).split("**")
        paragraphs.append("".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts)))
    return "".join(f"<p>{p}</p>" for p in paragraphs)


def _digest(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def live_update(view: JobView | None, job_id: str | None, sent: Sent, note: str = "") -> dict[str, Any]:
    """One poll of the page (static/train_live.js): what changed since `sent` (the page's cursor,
    updated here). Keys appear only when their part changed: "status" and "bar" (HTML), "charts"
    (chart_delta), "log" (HTML), "heat" (HTML; "" hides it); "refresh": True when a preview or a
    file was added, so the page asks Gradio for the gallery and the downloads (file_outputs).
    `note` follows the status (the rest of the queue)."""
    job_id = job_id or "none"
    out: dict[str, Any] = {}
    delta = chart_delta(sent, job_id, *chart_columns(view))
    reset = delta is not None and delta["reset"]
    if delta is not None:
        out["charts"] = delta
    status = status_markdown(view) if view is not None else NO_RUN
    bar = progress_html(view.fraction if view is not None else 0.0)
    for key, value in (("status", status_html(status + note)), ("bar", bar)):
        if _digest(value) != getattr(sent, key):
            out[key] = value
            setattr(sent, key, _digest(value))
    notes = len(view.notes) if view is not None else 0
    if reset or notes != sent.log:
        out["log"], sent.log = (log_html(view) if view is not None else ""), notes
    heat = heatmap_update(view, job_id, sent)
    if heat is not None:
        out["heat"] = heat
    counts = (len(view.previews), len(view.files)) if view is not None else (0, 0)
    if reset or counts != (sent.previews, sent.files):
        out["refresh"] = True
        sent.previews, sent.files = counts
    return out


def file_outputs(view: JobView | None, job_id: str | None, sent: Sent) -> list[Any]:
    """[previews, downloads] for the Gradio refresh the page asks for when live_update says so:
    gr.skip() for each this tab already shows (`sent` is the tab's server-side State, kept apart
    from the poller's cursor)."""
    job_id = job_id or "none"
    new_job, sent.job = sent.job != job_id, job_id
    out: list[Any] = []
    for attr, count, value in (("previews", len(view.previews) if view else 0, lambda: preview_items(view) if view else []),
                               ("files", len(view.files) if view else 0, lambda: (downloads(view) if view else []) or None)):
        out.append(value() if new_job or getattr(sent, attr) != count else gr.skip())
        setattr(sent, attr, count)
    return out


@functools.lru_cache(maxsize=16)
def heatmap_labels(run_folder: str | None) -> tuple[tuple[str, ...] | None, str]:
    """(row names, title) of a run's heat map, from the embedding the run started from (its copy
    in the run folder's `original/`): the layer groups of a per-layer embedding and how they were
    grouped. Read once per run folder (the copy never changes); (None, "") when there is none."""
    if not run_folder:
        return None, ""
    from embeddings.formats import load_embedding

    for path in sorted((Path(run_folder) / "original").glob("*")):
        try:
            info = load_embedding(path).kind_info
        except (OSError, ValueError) as e:  # an unreadable copy only costs the row names
            log.info("cannot read %s for the heat map's rows: %s", path, e)
            continue
        groups = info.get("groups")
        anchors = info.get("timesteps")  # per-timestep: a row per anchor (and layer group)
        if isinstance(anchors, list) and all(isinstance(t, int | float) for t in anchors):
            names = [f"t={t:g}" for t in anchors]
            if isinstance(groups, list):
                names = [f"{n} {g}" for n in names for g in groups]
            return tuple(names), "Vector norms per anchor timestep" + (" and layer group" if groups else "")
        if isinstance(groups, list) and all(isinstance(g, str) for g in groups):
            grouping = info.get("grouping")
            return tuple(groups), f"Vector norms per layer group ({grouping})" if grouping else ""
    return None, ""


def heatmap_update(view: JobView | None, job_id: str | None, sent: Sent) -> str | None:
    """The heat map of a run whose embedding has one set of vectors per layer group (layer x
    vector, the latest norms) as HTML, only when its step or the job changed (None otherwise);
    "" for a run without one (a standard embedding), which hides it."""
    latest = view.norms[-1] if view is not None and view.norms else None
    grid = view.layer_grid() if latest is not None and latest.layers else None
    key = None if grid is None else (job_id or "none", grid[0])
    if key == sent.heat:
        return None
    sent.heat = key
    if grid is None:
        return ""
    names, title = heatmap_labels(view.run_folder)
    return heatmap_html(grid[0], grid[1], names, title)


# --- actions -----------------------------------------------------------------------------------------------
def in_words(message: str) -> str:
    """'clip_value: bad piece' -> 'Clip at (clip_value): bad piece': the page shows labels, not
    field names, so an error names the box the person can see (the field name stays, for the CLI)."""
    name, sep, rest = str(message).partition(":")
    if sep and name in TEXTS:
        return f"{TEXTS[name].label} ({name}):{rest}"
    return str(message)


def check_inputs(ctx: AppContext, config) -> None:
    """Say now, in the page, what the job would only find out in the queue: no embedding or dataset
    picked, or one that does not exist (the library's and the data folder's resolvers decide, as
    in the trainer, so the rules match)."""
    from embeddings.embedding import EmbeddingError

    if not config.embedding.strip():
        raise fail("Pick the embedding to train (or create one in the Create tab)")
    if not config.dataset.strip():
        raise fail("Pick a dataset (make one in the Preprocess tab)")
    try:
        ctx.library(None).resolve(config.embedding).require_embedding()
        ctx.data.find_dataset(config.dataset)
    except (EmbeddingError, FileNotFoundError) as e:
        raise fail(str(e)) from e


def start(ctx: AppContext, config) -> str:
    from training.service import start_training

    check_inputs(ctx, config)
    ahead = len(ctx.registry.active())
    job = start_training(ctx.registry, config, ctx.data)
    if ahead:
        return f"Queued **{job.title}**: it starts when the {ahead} job(s) ahead finish."
    return f"Started **{job.title}**."


def interrupt(ctx: AppContext) -> str:
    job = current_job(ctx)
    if job is None or job.state.done:
        raise fail("No training run is going on")
    from training.service import interrupt as service_interrupt

    service_interrupt(job)
    return "Interrupt requested: the run saves its vectors and a resume bundle, then stops."


def resume(ctx: AppContext) -> str:
    from training.service import resume_training

    job = current_job(ctx)
    if job is not None and not job.state.done:
        raise fail("A run is still going on; interrupt it first or wait for it to finish")
    new = resume_training(ctx.registry, _last_run_folder(ctx), ctx.data)
    return f"Resumed as **{new.title}**."


def _last_run_folder(ctx: AppContext) -> Path:
    """The run folder of the latest training job that left a resume bundle (a job stopped while
    still queued leaves none); its first "files" event names the folder."""
    for job in reversed(ctx.registry.jobs("train")):
        folder = view_of(job.events(events.Files)).run_folder
        if folder and (Path(folder) / BUNDLE).is_file():
            return Path(folder)
    from training.run_folder import list_runs

    for run in list_runs(ctx.data.runs):
        if run.bundle_path.is_file():
            return run.path
    raise fail("No run to resume: no run folder has a resume bundle yet")


def restore_settings(ctx: AppContext, names: list[str], embedding: str) -> tuple[list[Any], str]:
    """Picking an embedding fills the form with the settings it was last trained with."""
    try:
        emb = ctx.library(None).get(embedding)
    except (ImportError, ValueError, OSError) as e:
        log.info("cannot read %s: %s", embedding, e)
        emb = None
    settings = (emb.metadata.get("settings") if emb is not None else None) or {}
    if not isinstance(settings, dict) or not settings:
        return [gr.skip() for _ in names], ("" if emb is None else f"{embedding} has not been trained yet "
                                                                   f"(step {emb.step}): defaults kept.")
    from training.config import ConfigError, TrainConfig

    try:  # any schema version: older settings come back under today's field names
        settings = TrainConfig.from_saved(settings, ignore_unknown=True).to_dict()
    except ConfigError as e:
        return [gr.skip() for _ in names], f"Settings of **{embedding}** cannot be restored: {short(str(e))}"
    settings = {**settings, "embedding": embedding}
    return config_to_form_values(names, settings), f"Settings restored from **{embedding}** (step {emb.step})."


def run_settings(ctx: AppContext, names: list[str]) -> tuple[list[Any], str] | None:
    """The form values of the run on screen (the running or latest one), from its run folder's
    settings, for a page that was just (re)loaded; None when there is no run to show."""
    job = current_job(ctx)
    if job is None:
        return None
    folder = view_of(job.events(events.Files)).run_folder
    if not folder:
        return None
    from training.config import ConfigError
    from training.run_folder import RunFolder

    try:
        settings = RunFolder(Path(folder)).read_settings()
    except (ConfigError, OSError, ValueError) as e:
        log.info("cannot read the settings of %s: %s", folder, e)
        return None
    return config_to_form_values(names, settings), f"Settings of the run on screen (**{job.title}**)."


def native_resolution(ctx: AppContext, spec: str) -> int | None:
    """The native image side of the model `spec` names (embeddings.families), None when unknown."""
    from embeddings.families import native_size

    spec = (spec or "").strip()
    if native_size(spec) is not None and spec not in ("sd1", "sd2", "sdxl"):
        return native_size(spec)
    try:
        from models.discovery import discover_models

        info = next((m for m in discover_models(ctx.data) if m.spec == spec), None)
    except Exception:  # an unreadable models folder must not break the form
        log.exception("model discovery failed")
        return None
    return native_size(info.family) if info is not None else None


MEMORY_FIELDS = ("model", "resolution", "batch_size", "mixed_precision", "gradient_checkpointing", "preview_every")


def memory_estimate(ctx: AppContext, model: str, resolution: float | None, batch: float | None, precision: str | None,
                    checkpointing: bool | None, preview_every: float | None) -> str:
    """The pre-flight GPU memory line (training.memory) for the form's settings, before anything
    loads; empty while a number in the form is not one yet."""
    from training.config import TrainConfig

    try:
        config = TrainConfig(model=(model or "").strip() or ctx.default_model_spec(), resolution=int(resolution or 512),
                             batch_size=max(1, int(batch or 1)), mixed_precision=precision or "auto",
                             gradient_checkpointing=bool(checkpointing), preview_every=int(preview_every or 0))
        return preflight_text(config, ctx.data.models)
    except (TypeError, ValueError):
        return ""


# --- layout ------------------------------------------------------------------------------------------------
# The essentials, three to a row, under the Start / Interrupt / Resume bar, so all of them show
# without scrolling at 1400x1000; the rest is in "Advanced", the long reports are folded.
ESSENTIAL_ROWS = (("embedding", "dataset", "model"), ("lr", "lr_kind", "max_steps"),
                  ("batch_size", "resolution", "template"), ("preview_every", "save_every"))
HIDDEN_CSS_CLASS = "ti-hidden"


def build(ctx: AppContext, demo=None):
    from training.templates import list_templates
    from ui.common import Refresh
    from ui.create_tab import model_dropdown

    fields = _fields()
    hints = {n: h for n, h, _ in fields}
    defaults = {n: d for n, _, d in fields}
    comps: dict[str, gr.components.Component] = {}
    templates = list(list_templates(ctx.data.templates))

    def make(name: str, **kw: Any) -> gr.components.Component:
        return _component(name, hints[name], defaults[name], **kw)

    def special(name: str) -> gr.components.Component:
        if name == "embedding":
            return gr.Dropdown(ctx.embedding_names(), label="Embedding", elem_id="train_embedding",
                               allow_custom_value=True, min_width=160)
        if name == "dataset":
            return gr.Dropdown(ctx.datasets(), label="Dataset", elem_id="train_dataset", allow_custom_value=True,
                               min_width=160)
        if name == "model":
            return model_dropdown(ctx, "Base model", "train_model", info=None)
        if name == "template":
            return gr.Dropdown(templates, value=defaults["template"], label="Prompt template",
                               elem_id="train_template", allow_custom_value=True, min_width=160)
        return make(name, min_width=140)

    with gr.Row(elem_id="train_page"):
        with gr.Column(scale=5, elem_id="train_form"):
            with gr.Row(elem_id="train_bar"):
                start_btn = gr.Button("Start", variant="primary", elem_id="train_start")
                stop_btn = gr.Button("Interrupt", variant="stop", elem_id="train_interrupt")
                resume_btn = gr.Button("Resume", elem_id="train_resume")
            action_md = gr.Markdown(elem_id="train_action")
            for row in ESSENTIAL_ROWS:
                with gr.Row(equal_height=True):
                    for name in row:
                        comps[name] = special(name)
            restored = gr.Markdown(elem_id="train_restored")
            dataset_md = gr.Markdown(elem_id="train_dataset_check")
            lr_msg = gr.Markdown(elem_id="train_lr_msg")
            memory_md = gr.Markdown(elem_id="train_memory")
            with gr.Accordion("Dataset details and sample prompts", open=False, elem_id="train_details"):
                dataset_details = gr.Markdown(elem_id="train_dataset_details")
                template_md = gr.Markdown(elem_id="train_template_preview")
            with gr.Accordion("Learning-rate schedule", open=False, elem_id="train_lr_accordion"):
                lr_plot = gr.LinePlot(x="step", y="lr", title="Learning-rate schedule", height=180,
                                      elem_id="train_lr_plot")
            with gr.Accordion("Advanced", open=False, elem_id="train_advanced"):
                grouped = {n for _, names in ADVANCED for n in names}
                other = tuple(n for n in hints if n not in grouped and n not in comps)
                comps.update(grouped_fields([*ADVANCED, ("Other", other)], hints, make))
        with gr.Column(scale=6, elem_id="train_dashboard"):
            # The status, bar, log and heat map are written by the page's poller (static/train_live.js)
            # into these slots; mounting the status slot (the tab shown) starts it.
            gr.HTML(live_slot("train_status_live", status_html(NO_RUN), "ti-status-line",
                              period_ms=round(POLL_SECONDS * 1000)),
                    elem_id="train_status", js_on_load="window.tiLive && window.tiLive.now()")
            gr.HTML(live_slot("train_progress_live", progress_html(0.0)), elem_id="train_progress", js_on_load=None)
            gr.HTML(live_slot("train_log_live", ""), elem_id="train_log", js_on_load=None)
            gr.HTML('<canvas id="train_loss_canvas" class="ti-chart"></canvas>', elem_id="train_loss",
                    js_on_load="window.tiCharts && window.tiCharts.redraw()")
            gr.HTML('<canvas id="train_norms_canvas" class="ti-chart ti-chart-small"></canvas>',
                    elem_id="train_norms")
            gr.HTML(live_slot("train_heatmap_live", ""), elem_id="train_heatmap", js_on_load=None)  # per-layer runs
            gallery = gr.Gallery(label="Previews (they appear every 'preview every' steps)", columns=4,
                                 height="auto", elem_id="train_previews")
            downloads = gr.File(label="Latest snapshot (each format)", file_count="multiple", interactive=False,
                                elem_id="train_downloads")
            refresh_btn = gr.Button("Refresh previews and files", elem_id="train_refresh",
                                    elem_classes=[HIDDEN_CSS_CLASS])  # pressed by the poller
    names = [n for n, _, _ in fields]
    form = [comps[n] for n in names]
    sent_state = gr.State(None)  # per browser tab: a Sent (previews, files shown); None after a reload
    auto_resolution = gr.State(None)  # the resolution the form set from the model (not the person)

    # live helpers
    sched_inputs = [comps["lr"], comps["lr_kind"], comps["max_steps"], comps["warmup_steps"], comps["min_lr"]]
    gr.on([c.change for c in sched_inputs], schedule_plot, sched_inputs, [lr_plot, lr_msg],
          api_visibility="private", show_progress="hidden", trigger_mode="always_last")
    sched_btn = gr.Button(visible=False)
    sched_btn.click(schedule_plot, sched_inputs, [lr_plot, lr_msg], api_name="lr_schedule")

    def tmpl(t, e, d):
        return template_preview(ctx, t, e, d)

    tmpl_inputs = [comps["template"], comps["embedding"], comps["dataset"]]
    gr.on([c.change for c in tmpl_inputs], tmpl, tmpl_inputs, template_md, api_visibility="private",
          show_progress="hidden", trigger_mode="always_last")

    def check(d, e, t, r):
        return dataset_report(ctx, d, e, t, r)

    check_inputs_ = [comps["dataset"], comps["embedding"], comps["template"], comps["resolution"]]
    gr.on([c.change for c in check_inputs_], check, check_inputs_, [dataset_md, dataset_details],
          api_name="dataset_check", show_progress="hidden", trigger_mode="always_last")

    def memory(*values):
        return memory_estimate(ctx, *values)

    memory_inputs = [comps[n] for n in MEMORY_FIELDS]
    gr.on([c.change for c in memory_inputs], memory, memory_inputs, memory_md, api_visibility="private",
          show_progress="hidden", trigger_mode="always_last")

    def restore(e):
        if not e:
            return [gr.skip() for _ in names] + [""]
        vals, msg = restore_settings(ctx, names, e)
        return [*vals, msg]

    comps["embedding"].input(restore, comps["embedding"], [*form, restored], api_name="restore_settings")

    def model_picked(spec, resolution, auto):
        """A new model sets the resolution to its native size, unless the person typed their own."""
        native = native_resolution(ctx, spec)
        if native is None or (resolution not in (None, auto) and auto is not None):
            return gr.skip(), auto
        return native, native

    comps["model"].input(model_picked, [comps["model"], comps["resolution"], auto_resolution],
                         [comps["resolution"], auto_resolution], api_visibility="private", show_progress="hidden")

    @user_errors("Start")
    def start_fn(*values):
        try:
            config = form_values_to_config(names, list(values))
        except ValueError as e:
            raise ValueError(in_words(str(e))) from None
        return start(ctx, config)

    start_btn.click(start_fn, form, action_md, api_name="start_training", concurrency_id="train_ctl",
                    concurrency_limit=1).then(None, js=POKE)

    @user_errors("Interrupt")
    def interrupt_fn():
        return interrupt(ctx)

    stop_btn.click(interrupt_fn, None, action_md, api_name="interrupt").then(None, js=POKE)

    @user_errors("Resume")
    def resume_fn():
        return resume(ctx)

    resume_btn.click(resume_fn, None, action_md, api_name="resume", concurrency_id="train_ctl",
                     concurrency_limit=1).then(None, js=POKE)

    views = ViewCache(history=True)  # one folded view per job, shared by every open tab

    def shown_job():
        job = current_job(ctx)
        return job, (views.get(job) if job is not None else None), (job.id if job is not None else None)

    def train_live(cursor: str) -> str:
        """What changed on the Train tab since the page's cursor, with the new cursor (JSON)."""
        job, view, job_id = shown_job()
        sent = Sent.from_text(cursor)
        out = live_update(view, job_id, sent, queue_note(ctx, job))
        return json.dumps({**out, "cursor": sent.to_text()}, separators=(",", ":"))

    # Off the queue: one plain request a second per open Train tab (POST gradio_api/run/train_live).
    gr.api(train_live, api_name="train_live", queue=False, api_visibility="undocumented")

    def train_files(sent):
        sent = sent if isinstance(sent, Sent) else Sent()
        _, view, job_id = shown_job()
        return [*file_outputs(view, job_id, sent), sent]

    refresh_btn.click(train_files, sent_state, [gallery, downloads, sent_state], api_name="train_files",
                      api_visibility="undocumented", show_progress="hidden", trigger_mode="always_last",
                      concurrency_limit=None)

    def on_load(model_spec):
        """A (re)loaded page shows the settings of the run on screen; with no run, the resolution
        starts at the default model's native size."""
        shown = run_settings(ctx, names)
        if shown is not None:
            return [*shown[0], shown[1], gr.skip()]
        native = native_resolution(ctx, model_spec)
        values: list[Any] = [gr.skip() for _ in names]
        if native is not None:
            values[names.index("resolution")] = native
        return [*values, "", native]

    def refresh(e, d):
        # Only the lists: an empty value is left alone, so a refresh racing the page's on_load (which
        # fills the form with the run's settings) cannot blank what on_load set.
        return (gr.Dropdown(choices=ctx.embedding_names(), **({"value": e} if e else {})),
                gr.Dropdown(choices=ctx.datasets(), **({"value": d} if d else {})))

    if demo is not None:
        demo.load(on_load, comps["model"], [*form, restored, auto_resolution], api_visibility="private",
                  show_progress="hidden")
        demo.load(schedule_plot, sched_inputs, [lr_plot, lr_msg], api_visibility="private", show_progress="hidden")
        demo.load(memory, memory_inputs, memory_md, api_visibility="private", show_progress="hidden")
    refresher = Refresh(refresh, [comps["embedding"], comps["dataset"]], [comps["embedding"], comps["dataset"]])
    return refresher


def _default(fields, name):
    return next(d for n, _, d in fields if n == name)


def _hint_default(fields, name):
    return next((h, d) for n, h, d in fields if n == name)
