"""Evaluate tab: which step is best. Scores chart, the suggested step, promote, grids, run comparison.

The page only wires widgets to the core: `training.scores` (evaluate a run on the worker, read its
scores), `training.best_step` (the suggestion, in words), `training.promote`, `training.grid`,
`training.compare` and `training.charts` (the same chart `app.py evaluate --chart` writes).
Evaluations and grids generate images, so they run as jobs on the worker, like training; a timer
polls the job while one runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from jobs.view import view_of
from models.clip import ClipNotFound, discover_clips, find_clip
from training.charts import comparison_chart, score_chart
from training.compare import compare_runs
from training.config import TrainConfig
from training.errors import TrainingError
from training.grid import grid_for_run
from training.outputs import snapshot_steps
from training.promote import promote
from training.run_folder import RunFolder, list_runs
from training.scores import evaluate_run, run_scores
from ui.common import Refresh, fail, user_errors
from ui.state import AppContext

POLL_SECONDS = 1.0
AUTO_CLIP = "(automatic: the first one found)"
TABLE_HEADERS = ["step", "likeness", "editability", "eval loss"]


# ---- what the widgets call (no Gradio objects: testable without a page) -----------------------------
def run_choices(ctx: AppContext) -> list[tuple[str, str]]:
    out = []
    for run in list_runs(ctx.data.runs):
        steps = snapshot_steps(run)
        out.append((f"{run.name} ({len(steps)} snapshot(s))", str(run.path)))
    return out


def clip_choices(ctx: AppContext) -> list[tuple[str, str]]:
    return [(AUTO_CLIP, ""), *((f"{c.name} ({c.kind})", c.spec) for c in discover_clips(ctx.data))]


def clip_note(ctx: AppContext, run_path: str, clip_spec: str) -> str:
    """Which CLIP scores this run, or the one sentence on what to put where."""
    base = ""
    if run_path:
        try:
            base = TrainConfig.load(RunFolder(Path(run_path)).settings_path).model
        except (OSError, ValueError):
            pass
    try:
        info = find_clip(clip_spec or "", ctx.data, base_model=base)
    except ClipNotFound as e:
        return f"**No CLIP model:** {e}"
    return f"Scores with CLIP **{info.name}** ({info.kind}: `{info.path}`)."


@dataclass
class RunView:
    chart: Any  # PIL image
    table: list[list[Any]]
    suggestion: str
    step: int | None
    steps: str  # default grid steps


def show_run(run_path: str) -> RunView:
    """The run's scores as its folder holds them (no model loaded): chart, table, suggestion."""
    if not run_path:
        return RunView(None, [], "Pick a run.", None, "")
    run = RunFolder(Path(run_path))
    rs = run_scores(run)
    evals = dict(rs.eval_loss)
    table = [[f"{s.step} (untrained)" if s.untrained else s.step, round(s.likeness, 4), round(s.editability, 4),
              round(evals[s.step], 4) if s.step in evals and not s.untrained else ""] for s in rs.scores]
    steps = snapshot_steps(run)
    if rs.scores:
        words = f"**Suggested:** {rs.suggestion.words}."
    elif steps:
        words = "No scores yet: press **Evaluate run** (every snapshot is scored once, then cached)."
    else:
        words = "This run has no snapshots (save_every was 0 and it never finished)."
    pick = rs.suggestion.step
    grid_steps = _spread(steps, pick)
    return RunView(score_chart(rs) if rs.scores or rs.eval_loss else None, table, words, pick,
                   ",".join(str(s) for s in grid_steps))


def _spread(steps: list[int], around: int | None, n: int = 4) -> list[int]:
    """Up to `n` snapshot steps for a grid: evenly spread, always with the suggested one."""
    if len(steps) <= n:
        return steps
    picked = {steps[round(i * (len(steps) - 1) / (n - 1))] for i in range(n)}
    if around is not None and around in steps and around not in picked:
        picked.discard(min(picked, key=lambda s: abs(s - around)))
        picked.add(around)
    return sorted(picked)


def start_evaluation(ctx: AppContext, run_path: str, clip_spec: str, threshold: float) -> str:
    if not run_path:
        raise fail("Pick a run first")
    run = RunFolder(Path(run_path))
    overrides: dict[str, Any] = {"best_threshold": float(threshold)}
    if clip_spec:
        overrides["clip_model"] = clip_spec
    try:
        config = TrainConfig.load(run.settings_path)
        find_clip(clip_spec or config.clip_model, ctx.data, base_model=config.model)
    except ClipNotFound as e:
        raise fail(str(e)) from None
    job = ctx.registry.submit("evaluate", f"evaluate {run.name}",
                              lambda job: evaluate_run(run, ctx.data, job, overrides=overrides).to_dict())
    return job.id


def start_grid(ctx: AppContext, run_path: str, steps: str, seeds: str, prompts: str) -> str:
    if not run_path:
        raise fail("Pick a run first")
    run = RunFolder(Path(run_path))
    step_list, seed_list = _ints(steps, "Steps"), _ints(seeds, "Seeds")
    if not step_list:
        raise fail("Grid: give the snapshot steps, e.g. 500,1000,1500")
    prompt_list = [p.strip() for p in (prompts or "").splitlines() if p.strip()]

    def work(job) -> dict[str, Any]:
        grid = grid_for_run(run, ctx.data, step_list, seeds=seed_list, prompts=prompt_list, job=job)
        return {"grid": str(grid.path)}

    return ctx.registry.submit("grid", f"grid of {run.name}", work).id


def job_status(ctx: AppContext, job_id: str) -> tuple[str, bool, dict[str, Any] | None]:
    """(status line, still running, the result once finished)."""
    job = ctx.registry.get(job_id) if job_id else None
    if job is None:
        return "", False, None
    view = view_of(job.events_since(0)[0], job.title)
    if not view.done:
        p = view.progress
        what = f" {p.done}/{p.total}" if p is not None and p.total and p.phase != "loading" else ""
        doing = "loading the model" if p is not None and p.phase == "loading" else "working"
        return f"{job.title}: {doing}{what}…", True, None
    if view.state == "failed":
        return f"{job.title} failed: {view.error}", False, None
    if view.state == "interrupted":
        return f"{job.title} stopped.", False, None
    return f"{job.title}: done.", False, view.result if isinstance(view.result, dict) else {}


def promote_step(ctx: AppContext, run_path: str, step: float | None, name: str) -> str:
    if not run_path:
        raise fail("Pick a run first")
    if step is None:
        raise fail("Promote: give the step of the snapshot to keep")
    try:
        entry = promote(RunFolder(Path(run_path)), int(step), name, ctx.data)
    except TrainingError as e:
        raise fail(str(e)) from None
    return f"Promoted step {int(step)} to the library as **{name.strip()}** (`{entry.path}`)."


def compare(ctx: AppContext, run_paths: list[str]) -> tuple[Any, list[list[Any]], list[str]]:
    if len(run_paths or []) < 2:
        raise fail("Compare: pick two or more runs")
    cmp = compare_runs([RunFolder(Path(p)) for p in run_paths])
    rows = cmp.table() or [["(no settings differ)", *[""] * len(cmp.runs)]]
    return comparison_chart(cmp), rows, cmp.headers()


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in (text or "").replace(" ", "").split(",") if x]
    except ValueError:
        raise fail(f"{what}: whole numbers separated by commas, e.g. 500,1000") from None


# ---- the page ------------------------------------------------------------------------------------
@dataclass
class EvaluateTab:
    refresh: Refresh
    timer: Any


def build(ctx: AppContext) -> EvaluateTab:
    gr.Markdown("Which snapshot to keep: **likeness** (CLIP similarity of generated images to the training "
                "images) and **editability** (how well images follow prompts like *a painting of [name]*) for "
                "every snapshot of a run, and a suggested step. Early snapshots are editable but unlike the "
                "subject; late ones overfit and ignore the rest of the prompt.")
    with gr.Row():
        run = gr.Dropdown(choices=run_choices(ctx), label="Run", elem_id="ev_run", scale=3)
        clip = gr.Dropdown(choices=clip_choices(ctx), value="", label="CLIP model", elem_id="ev_clip", scale=2)
        threshold = gr.Slider(0, 1, value=0.9, step=0.05, label="Keep at least this share of the untrained "
                                                                  "editability", elem_id="ev_threshold", scale=2)
    note = gr.Markdown(elem_id="ev_clip_note")
    with gr.Row():
        evaluate_btn = gr.Button("Evaluate run", variant="primary", elem_id="ev_evaluate")
        status = gr.Markdown(elem_id="ev_status")
    suggestion = gr.Markdown(elem_id="ev_suggestion")
    with gr.Row():
        chart = gr.Image(label="Scores by step", type="pil", interactive=False, elem_id="ev_chart", scale=3)
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Scores", interactive=False, elem_id="ev_table", scale=2)
    with gr.Accordion("Promote a snapshot to the library", open=True):
        with gr.Row():
            promote_step_in = gr.Number(label="Step", precision=0, elem_id="ev_promote_step")
            promote_name = gr.Textbox(label="Name in the library (and in prompts)", elem_id="ev_promote_name")
            promote_btn = gr.Button("Promote", elem_id="ev_promote")
        promote_msg = gr.Markdown(elem_id="ev_promote_msg")
    with gr.Accordion("Grid: snapshots × seeds (or × prompts)", open=True):
        with gr.Row():
            grid_steps = gr.Textbox(label="Steps (columns)", elem_id="ev_grid_steps")
            grid_seeds = gr.Textbox(label="Seeds (rows)", value="1,2,3", elem_id="ev_grid_seeds")
            grid_prompts = gr.Textbox(label="Prompt(s), with [name]; two or more lines = one row per prompt",
                                      lines=2, elem_id="ev_grid_prompts")
        grid_btn = gr.Button("Make grid", elem_id="ev_grid")
        grid_img = gr.Image(label="Grid", type="filepath", interactive=False, elem_id="ev_grid_image")
        grid_file = gr.File(label="Download the grid", interactive=False, elem_id="ev_grid_file")
    with gr.Accordion("Compare runs", open=False):
        cmp_runs = gr.Dropdown(choices=run_choices(ctx), multiselect=True, label="Runs (two or more)",
                               elem_id="ev_cmp_runs")
        cmp_btn = gr.Button("Compare", elem_id="ev_compare")
        cmp_chart = gr.Image(label="Curves", type="pil", interactive=False, elem_id="ev_cmp_chart")
        cmp_table = gr.Dataframe(label="Settings that differ", interactive=False, elem_id="ev_cmp_table")
    job_id = gr.State("")
    timer = gr.Timer(POLL_SECONDS, active=False)

    run_outputs = [chart, table, suggestion, promote_step_in, grid_steps]

    def show(run_path):
        v = show_run(run_path)
        return v.chart, v.table, v.suggestion, v.step, v.steps

    def on_run(run_path, clip_spec):
        return (*show(run_path), clip_note(ctx, run_path, clip_spec))

    run.change(on_run, [run, clip], [*run_outputs, note], api_visibility="private")
    clip.change(lambda r, c: clip_note(ctx, r, c), [run, clip], note, api_visibility="private")

    @user_errors("Evaluate run")
    def on_evaluate(run_path, clip_spec, share):
        jid = start_evaluation(ctx, run_path, clip_spec, share)
        return jid, "Evaluating: each snapshot generates images once; scores are cached.", gr.Timer(active=True)

    evaluate_btn.click(on_evaluate, [run, clip, threshold], [job_id, status, timer], api_visibility="private")

    @user_errors("Grid")
    def on_grid(run_path, steps, seeds, prompts):
        jid = start_grid(ctx, run_path, steps, seeds, prompts)
        return jid, "Making the grid…", gr.Timer(active=True)

    grid_btn.click(on_grid, [run, grid_steps, grid_seeds, grid_prompts], [job_id, status, timer],
                   api_visibility="private")

    def on_tick(jid, run_path):
        text, running, result = job_status(ctx, jid)
        keep = [gr.skip()] * len(run_outputs)
        grid = [gr.skip(), gr.skip()]
        if result is not None:
            if "grid" in result:
                grid = [result["grid"], result["grid"]]
            else:
                keep = list(show(run_path))
        return (text, gr.Timer(active=running), *keep, *grid)

    timer.tick(on_tick, [job_id, run], [status, timer, *run_outputs, grid_img, grid_file], api_visibility="private",
               show_progress="hidden")

    @user_errors("Promote")
    def on_promote(run_path, step, name):
        return promote_step(ctx, run_path, step, name)

    promote_btn.click(on_promote, [run, promote_step_in, promote_name], promote_msg, api_visibility="private")

    @user_errors("Compare")
    def on_compare(paths):
        img, rows, headers = compare(ctx, paths)
        return img, gr.Dataframe(value=rows, headers=headers)

    cmp_btn.click(on_compare, cmp_runs, [cmp_chart, cmp_table], api_visibility="private")

    def refresh(run_path, clip_spec):
        # A dropdown shows its first choice when given none, and picking the shown run again is no
        # change: so the run shown is drawn here, not only on change.
        runs = run_choices(ctx)
        keep = run_path if any(v == run_path for _, v in runs) else (runs[0][1] if runs else None)
        return (gr.Dropdown(choices=runs, value=keep), gr.Dropdown(choices=clip_choices(ctx), value=clip_spec or ""),
                gr.Dropdown(choices=runs), clip_note(ctx, keep or "", clip_spec), *show(keep or ""))

    return EvaluateTab(Refresh(refresh, [run, clip], [run, clip, cmp_runs, note, *run_outputs]), timer)


__all__ = ["EvaluateTab", "build", "compare", "job_status", "promote_step", "run_choices", "show_run",
           "start_evaluation", "start_grid"]
