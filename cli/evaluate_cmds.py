"""Which step is best, headless: evaluate a run, promote a snapshot, draw a grid, compare runs.

    python app.py evaluate mycat-20250101-120000 [--clip data/models/clip/ViT-B-32] [--chart scores.png]
    python app.py promote mycat-20250101-120000 --step 1500 --name mycat-v2
    python app.py grid mycat-20250101-120000 --steps 500,1000,1500 --seeds 1,2,3 --prompt "a painting of [name]"
    python app.py compare RUN_A RUN_B [--chart compare.png]

RUN is a run folder or its name under data/runs. Scores are cached per snapshot in the run
folder, so evaluating again is instant; they go to the run's scores.csv beside loss.csv.
"""

from __future__ import annotations

import functools
from pathlib import Path

from cli import CliError
from cli.common import data_dir, print_json
from cli.generate_cmd import parse_size
from training.errors import TrainingError
from training.run_folder import find_run


def _says_why(func):
    """A TrainingError (no snapshot at that step, no training images, ...) is a one-line user error."""

    @functools.wraps(func)
    def run(args) -> int:
        try:
            return func(args)
        except TrainingError as e:
            raise CliError(str(e)) from e

    return run


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="CLIP likeness/editability of every snapshot of a run, and the best step")
    p.add_argument("run", help="a run folder or its name under data/runs")
    p.add_argument("--clip", default=None, help="CLIP model: a folder or file, a name in data/models/clip, a cached "
                                                "hub id, or toy (default: the run's setting, else the first found)")
    p.add_argument("--seeds", default="", help="comma-separated seeds of the scored images (default: the run's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="best step: keep at least this share of the untrained editability (default: the run's, 0.9)")
    p.add_argument("--chart", default="", metavar="PNG", help="also write the score chart to this PNG")
    p.add_argument("--json", action="store_true", help="print the scores and the suggestion as JSON")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("promote", help="copy a run's snapshot into the embeddings library under a new name")
    p.add_argument("run", help="a run folder or its name under data/runs")
    p.add_argument("--step", type=int, default=None, help="the snapshot's step (default: the suggested step)")
    p.add_argument("--name", required=True, help="the name in the library (and in prompts)")
    p.set_defaults(func=run_promote)

    p = sub.add_parser("grid", help="a labelled PNG: a column per snapshot step, a row per seed (or prompt)")
    p.add_argument("run", help="a run folder or its name under data/runs")
    p.add_argument("--steps", required=True, help="comma-separated snapshot steps, e.g. 500,1000,1500")
    p.add_argument("--seeds", default="", help="comma-separated seeds, one row each (default: the preview seeds)")
    p.add_argument("--prompt", action="append", default=[],
                   help="the prompt, with [name] or the embedding's name; twice or more: one row per prompt")
    p.add_argument("--negative", default=None, help="negative prompt (default: the run's preview negative)")
    p.add_argument("--sample-steps", type=int, default=None, help="sampling steps (default: the run's preview steps)")
    p.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the run's preview CFG)")
    p.add_argument("--size", default="", metavar="WxH", help="image size (default: the run's preview size)")
    p.set_defaults(func=run_grid)

    p = sub.add_parser("compare", help="two or more runs: final values of their curves and the settings that differ")
    p.add_argument("runs", nargs="+", help="run folders or names under data/runs")
    p.add_argument("--chart", default="", metavar="PNG", help="write the overlaid curves to this PNG")
    p.set_defaults(func=run_compare)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise CliError(f"{what} {text!r}: write whole numbers separated by commas, e.g. 500,1000") from None


@_says_why
def run_evaluate(args) -> int:
    from training.charts import score_chart
    from training.scores import evaluate_run

    dd = data_dir(args)
    run = find_run(args.run, dd.runs)
    overrides = {}
    if args.clip is not None:
        overrides["clip_model"] = args.clip
    if args.seeds:
        overrides["score_seeds"] = _ints(args.seeds, "--seeds")
    if args.threshold is not None:
        overrides["best_threshold"] = args.threshold
    result = evaluate_run(run, dd, overrides=overrides)
    if args.chart:
        out = Path(args.chart)
        out.parent.mkdir(parents=True, exist_ok=True)
        score_chart(result).save(out)
    if args.json:
        print_json(result.to_dict())
        return 0
    evals = dict(result.eval_loss)
    print(f"{'step':>13}  {'likeness':>9}  {'editability':>11}  {'eval loss':>9}  time")
    for s in result.scores:
        loss = f"{evals[s.step]:9.4f}" if s.step in evals and not s.untrained else " " * 9
        when = "cached" if s.cached else f"{s.seconds:.1f}s"
        label = f"{s.step} (untrained)" if s.untrained else str(s.step)
        print(f"{label:>13}  {s.likeness:9.4f}  {s.editability:11.4f}  {loss}  {when}")
    print(f"suggested: {result.suggestion.words}")
    print(f"scores: {run.scores_csv}" + (f"; chart: {args.chart}" if args.chart else ""))
    if result.suggestion.step is not None:
        print(f"keep it with: python app.py promote {run.path} --step {result.suggestion.step} --name NAME")
    return 0


@_says_why
def run_promote(args) -> int:
    from training.promote import promote
    from training.scores import run_scores

    dd = data_dir(args)
    run = find_run(args.run, dd.runs)
    step = args.step
    if step is None:
        step = run_scores(run).suggestion.step
        if step is None:
            raise CliError(f"{run.name} has no scores yet: give --step, or run python app.py evaluate {run.path}")
    entry = promote(run, step, args.name, dd)
    scores = entry.embedding.metadata.get("promoted_from", {}).get("scores", {}) if entry.embedding else {}
    said = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
    print(f"promoted step {step} of {run.name} to {entry.path} as {args.name!r}" + (f" ({said})" if said else ""))
    return 0


@_says_why
def run_grid(args) -> int:
    from training.grid import grid_for_run

    dd = data_dir(args)
    run = find_run(args.run, dd.runs)
    width, height = parse_size(args.size)
    grid = grid_for_run(run, dd, _ints(args.steps, "--steps"), seeds=_ints(args.seeds, "--seeds"),
                        prompts=args.prompt, negative=args.negative, sample_steps=args.sample_steps, cfg=args.cfg,
                        width=width, height=height)
    rows = "prompt" if grid.spec.by_prompt else "seed"
    print(f"wrote {grid.path} ({grid.image.width}x{grid.image.height}: {len(grid.spec.steps)} step(s) x "
          f"{len(grid.cells)} {rows}(s))")
    return 0


@_says_why
def run_compare(args) -> int:
    from training.charts import comparison_chart
    from training.compare import compare_runs

    dd = data_dir(args)
    if len(args.runs) < 2:
        raise CliError("compare needs two or more runs")
    comparison = compare_runs([find_run(r, dd.runs) for r in args.runs])
    for r in comparison.runs:
        last = ", ".join(f"{m} {pts[-1][1]:.4f} (step {pts[-1][0]})" for m, pts in r.series.items() if pts)
        print(f"{r.name}: {last or 'no curves yet'}")
    if comparison.differing:
        print("settings that differ:")
        for row in comparison.table():
            print("  " + row[0] + ": " + " | ".join(row[1:]))
    else:
        print("no settings differ")
    if args.chart:
        out = Path(args.chart)
        out.parent.mkdir(parents=True, exist_ok=True)
        comparison_chart(comparison).save(out)
        print(f"chart: {out}")
    return 0
