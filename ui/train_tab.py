"""Train tab: the TrainConfig form, Start / Interrupt / Resume, and the live view of a run.

The form is generated from `TrainConfig`'s fields, so a new option appears here (in "Advanced")
the day the training engineers add it, and what the form fills is exactly what the CLI reads.
The live view is a `gr.Timer` that reads the job's event log by cursor, folded into the job's view
(jobs.view, the same view `app.py train` prints): the run belongs to the server, not to the page,
so reloading or opening a second tab re-attaches to it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from jobs import events
from jobs.view import JobView, ViewCache, view_of
from training.config_text import FIELD_TEXT
from ui.common import FieldText, fail, field_text, fmt_seconds, grouped_fields, short, user_errors, widget_for_field
from ui.state import AppContext

log = logging.getLogger(__name__)

# Up front; everything else goes in the "Advanced" accordion, grouped by topic (ADVANCED).
BASIC = ("embedding", "dataset", "model", "template", "lr", "lr_kind", "max_steps", "batch_size",
         "preview_every", "save_every", "preview_prompts", "resolution")
SPECIAL = ("embedding", "dataset", "model", "template", "lr", "lr_kind")  # built by hand below
# The Advanced accordion by topic. A TrainConfig field in no group lands in "Other", so a new
# option still shows up the day it is added.
ADVANCED: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Data", ("bucketing", "no_upscale", "shuffle_tags", "alpha_weight", "repeats", "flip_p", "latent_sampling",
              "keep_tags", "tag_dropout", "bucket_step", "min_bucket", "max_bucket", "filename_regex",
              "join_string")),
    ("Optimizer & schedule", ("more_steps", "warmup_steps", "min_lr", "grad_accum", "optimizer", "weight_decay",
                              "clip_mode", "clip_value", "seed")),
    ("Text encoder & vectors", ("vector_shuffle", "shuffle_prob", "clip_skip")),
    ("Precision & speed", ("gradient_checkpointing", "mixed_precision")),
    ("Previews", ("preview_steps", "preview_cfg", "preview_scheduler", "preview_width", "preview_height",
                  "preview_seeds", "preview_negative")),
    ("Evaluation & health", ("tensorboard", "eval_every", "eval_images", "nan_patience", "not_learning_steps",
                             "not_learning_threshold")),
    ("Snapshots", ("save_png_embeddings", "snapshot_formats", "run_name")),
)
TEXTS: dict[str, FieldText] = {key: FieldText(*text) for key, text in FIELD_TEXT.items()}
POLL_SECONDS = 1.0
CHART_SECONDS = 5.0  # loss/norm charts, previews and downloads refresh this often while running
MAX_PLOT_POINTS = 1500


def _choices() -> dict[str, tuple[str, ...]]:
    from training import config as c

    return {"lr_kind": c.LR_KINDS, "clip_mode": c.CLIP_MODES, "optimizer": c.OPTIMIZERS,
            "latent_sampling": c.LATENT_SAMPLING, "mixed_precision": c.MIXED_PRECISION,
            "vector_shuffle": c.VECTOR_SHUFFLE, "preview_scheduler": c.PREVIEW_SCHEDULERS}


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


def dataset_report(ctx: AppContext, dataset: str, embedding: str, template: str, resolution: float | None = None) -> str:
    """The dataset check (counts, sizes, sample prompts), or a one-line problem."""
    folder = _dataset_path(ctx, dataset)
    if folder is None:
        return "Pick a dataset (make one in the Preprocess tab)." if not dataset else f"**{dataset}:** no such folder"
    from training.dataset import DataOptions, check_dataset

    try:
        opts = DataOptions(**{k: v for k, v in (("template", template), ("resolution", int(resolution or 0)))
                              if v})
        report = check_dataset(folder, opts, name=embedding or "", tokenizer=ctx.tokenizer(),
                               templates_dir=ctx.data.templates)
    except (ValueError, OSError) as e:
        return f"**Dataset problem:** {short(str(e))}"
    return _report_markdown(report)


def _report_markdown(report: Any) -> str:
    if hasattr(report, "describe"):
        lines = report.describe()
        return "\n".join(f"- {line}" for line in (lines if isinstance(lines, list) else [lines]))
    if dataclasses.is_dataclass(report):
        report = dataclasses.asdict(report)
    if isinstance(report, dict):
        return "\n".join(f"- **{k}:** {short(str(v), 200)}" for k, v in report.items())
    return str(report)


# --- the live view -------------------------------------------------------------------------------------------
@dataclass
class LiveView:
    status: str
    progress: float
    loss: pd.DataFrame | None
    norms: pd.DataFrame | None
    previews: list[tuple[str, str]]
    warnings: str
    downloads: list[str]
    running: bool


def current_job(ctx: AppContext):
    """The training job to show: the running or queued one, else the latest."""
    jobs = ctx.registry.jobs("train")
    active = [j for j in jobs if not j.state.done]
    if active:
        return active[0]
    return jobs[-1] if jobs else None


def live_view(view: JobView | None) -> LiveView:
    """Everything the page shows about a run, drawn from the one folded view of its events."""
    if view is None:
        return LiveView("No training run yet.", 0.0, None, None, [], "", [], False)
    return LiveView(status_markdown(view), view.fraction, loss_frame(view), norm_frame(view), preview_items(view),
                    warnings_markdown(view), downloads(view), not view.done)


def status_markdown(view: JobView) -> str:
    text = f"**{view.title}** — {view.state}"
    if view.state == "queued":
        text += f" (waiting for {view.ahead or 1} job(s) ahead to finish)"
    p = view.progress
    if p is not None:
        text += (f" · step {p.done}/{p.total}" + (f" · {p.it_s:.2f} it/s" if p.it_s is not None else "")
                 + f" · ETA {fmt_seconds(p.eta_s)}")
    if view.error:
        text += f"\n\n**Failed:** {short(view.error)}"
    return text


def warnings_markdown(view: JobView) -> str:
    lines = [("Error: " if n.level == "error" else "") + n.text for n in view.notes if n.level != "message"]
    return "\n".join(f"- ⚠ {short(w)}" for w in lines[-20:])


# A LinePlot gets None, not an empty DataFrame, while there is nothing to draw: Gradio 6.31's
# LinePlot fixes its colour legend from the first value it draws, so starting from an empty frame
# leaves every later line invisible.
def loss_frame(view: JobView) -> pd.DataFrame | None:
    series = view.loss_series()
    return _frame({name: series[name] for name in ("loss", "smoothed")}, ["step", "loss", "series"])


def norm_frame(view: JobView) -> pd.DataFrame | None:
    return _frame(view.norm_series(), ["step", "norm", "vector"])


def _frame(series: dict[str, list[tuple[int, float]]], columns: list[str]) -> pd.DataFrame | None:
    """Rows (step, value, series name), each series thinned to its share of MAX_PLOT_POINTS (so
    a long run keeps every line, not every n-th row of all of them)."""
    share = max(2, MAX_PLOT_POINTS // max(1, len(series)))
    rows = [(step, value, name) for name, points in series.items() for step, value in _thin(points, share)]
    rows.sort(key=lambda row: row[0])  # by step; stable, so each step's series keep their order
    return pd.DataFrame(rows, columns=columns) if rows else None


def preview_items(view: JobView) -> list[tuple[str, str]]:
    return [(p.path, f"step {p.step}" + (f" · {p.prompt}" if p.prompt else "")) for p in view.previews[-24:]]


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


def _view_outputs(v: LiveView) -> list[Any]:
    return [v.status, progress_html(v.progress), v.loss, v.norms, v.previews, v.warnings, v.downloads or None]


def progress_html(fraction: float) -> str:
    pct = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="ti-progress" style="background:var(--neutral-200);border-radius:4px;height:10px">'
            f'<div style="width:{pct:.1f}%;background:var(--color-accent);height:10px;border-radius:4px"></div></div>')


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


# --- layout ------------------------------------------------------------------------------------------------
def build(ctx: AppContext, demo=None):
    from training.templates import list_templates
    from ui.common import Refresh
    from ui.create_tab import model_dropdown

    fields = _fields()
    comps: dict[str, gr.components.Component] = {}
    templates = list(list_templates(ctx.data.templates))
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                comps["embedding"] = gr.Dropdown(ctx.embedding_names(), label="Embedding",
                                                 elem_id="train_embedding", allow_custom_value=True)
                comps["dataset"] = gr.Dropdown(ctx.datasets(), label="Dataset", elem_id="train_dataset",
                                               allow_custom_value=True)
            restored = gr.Markdown(elem_id="train_restored")
            dataset_md = gr.Markdown(elem_id="train_dataset_check")
            comps["model"] = model_dropdown(ctx, "Base model", "train_model")
            comps["template"] = gr.Dropdown(templates, value=_default(fields, "template"), label="Prompt template",
                                            elem_id="train_template", allow_custom_value=True)
            template_md = gr.Markdown(elem_id="train_template_preview")
            with gr.Row():
                comps["lr"] = _component("lr", str, _default(fields, "lr"), scale=3)
                comps["lr_kind"] = _component("lr_kind", str, _default(fields, "lr_kind"))
            lr_msg = gr.Markdown(elem_id="train_lr_msg")
            lr_plot = gr.LinePlot(x="step", y="lr", title="Learning-rate schedule", height=180,
                                  elem_id="train_lr_plot")
            hints = {n: h for n, h, _ in fields}
            defaults = {n: d for n, _, d in fields}

            def make(name: str, **kw: Any) -> gr.components.Component:
                return _component(name, hints[name], defaults[name], **kw)

            basic = [n for n in BASIC if n not in SPECIAL]
            comps.update(grouped_fields([("", basic)], hints, make))
            with gr.Accordion("Advanced", open=False, elem_id="train_advanced"):
                grouped = {n for _, names in ADVANCED for n in names}
                other = tuple(n for n in hints if n not in grouped and n not in comps)
                comps.update(grouped_fields([*ADVANCED, ("Other", other)], hints, make))
            with gr.Row():
                start_btn = gr.Button("Start", variant="primary", elem_id="train_start")
                stop_btn = gr.Button("Interrupt", variant="stop", elem_id="train_interrupt")
                resume_btn = gr.Button("Resume", elem_id="train_resume")
            action_md = gr.Markdown(elem_id="train_action")
        with gr.Column(scale=4):
            status_md = gr.Markdown("No training run yet.", elem_id="train_status")
            bar = gr.HTML(progress_html(0.0), elem_id="train_progress")
            loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=240,
                                    elem_id="train_loss")
            norm_plot = gr.LinePlot(x="step", y="norm", color="vector", title="Vector norms", height=200,
                                    elem_id="train_norms")
            gallery = gr.Gallery(label="Previews", columns=4, height="auto", elem_id="train_previews")
            warn_md = gr.Markdown(elem_id="train_warnings")
            downloads = gr.File(label="Latest snapshot (each format)", file_count="multiple", interactive=False,
                                elem_id="train_downloads")
    names = [n for n, _, _ in fields]
    form = [comps[n] for n in names]
    cursor = gr.State(None)  # per browser tab: (job id, events seen); None after a reload -> re-attach
    timer = gr.Timer(POLL_SECONDS, active=True)

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

    check_inputs = [comps["dataset"], comps["embedding"], comps["template"], comps["resolution"]]
    gr.on([c.change for c in check_inputs], check, check_inputs, dataset_md, api_name="dataset_check",
          show_progress="hidden", trigger_mode="always_last")

    def restore(e):
        if not e:
            return [gr.skip() for _ in names] + [""]
        vals, msg = restore_settings(ctx, names, e)
        return [*vals, msg]

    comps["embedding"].input(restore, comps["embedding"], [*form, restored], api_name="restore_settings")

    @user_errors("Start")
    def start_fn(*values):
        try:
            config = form_values_to_config(names, list(values))
        except ValueError as e:
            raise ValueError(in_words(str(e))) from None
        return start(ctx, config)

    start_btn.click(start_fn, form, action_md, api_name="start_training", concurrency_id="train_ctl",
                    concurrency_limit=1)

    @user_errors("Interrupt")
    def interrupt_fn():
        return interrupt(ctx)

    stop_btn.click(interrupt_fn, None, action_md, api_name="interrupt")

    @user_errors("Resume")
    def resume_fn():
        return resume(ctx)

    resume_btn.click(resume_fn, None, action_md, api_name="resume", concurrency_id="train_ctl", concurrency_limit=1)

    views = ViewCache()  # one folded view per job, shared by every open tab

    def poll(cur):
        job = current_job(ctx)
        if job is None:
            return [gr.skip()] * 7 + [cur] if cur == "none" else [*_view_outputs(live_view(None)), "none"]
        same_job = bool(cur) and cur != "none" and cur[0] == job.id
        if same_job:
            new_events, _ = job.events_since(cur[1])
            if not new_events:
                return [gr.skip()] * 7 + [cur]  # nothing new: no bytes go to the browser
        view = views.get(job)
        now = time.monotonic()
        charts_due = not same_job or view.done or now - cur[2] >= CHART_SECONDS
        if not charts_due:
            # Redrawing the charts and gallery costs the browser far more than the status line;
            # on a small machine that CPU is taken from training. Status every tick, charts less often.
            return [status_markdown(view), progress_html(view.fraction), gr.skip(), gr.skip(), gr.skip(),
                    warnings_markdown(view), gr.skip(), (job.id, view.seen, cur[2])]
        return [*_view_outputs(live_view(view)), (job.id, view.seen, now)]

    timer.tick(poll, cursor, [status_md, bar, loss_plot, norm_plot, gallery, warn_md, downloads, cursor],
               api_name="poll", api_visibility="undocumented", show_progress="hidden", concurrency_limit=None)

    def refresh(e, d):
        return gr.Dropdown(choices=ctx.embedding_names(), value=e), gr.Dropdown(choices=ctx.datasets(), value=d)

    if demo is not None:
        demo.load(schedule_plot, sched_inputs, [lr_plot, lr_msg], api_visibility="private", show_progress="hidden")
    return Refresh(refresh, [comps["embedding"], comps["dataset"]], [comps["embedding"], comps["dataset"]])


def _default(fields, name):
    return next(d for n, _, d in fields if n == name)


def _hint_default(fields, name):
    return next((h, d) for n, h, d in fields if n == name)
