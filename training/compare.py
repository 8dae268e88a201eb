"""Run comparison: the curves of two or more runs side by side, and the settings that differ.

Runs of different embeddings are allowed: each run is named by its folder, and its curves are
what its folder holds (loss.csv, eval.csv, scores.csv), so a comparison never loads a model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from training.config import SCHEMA_KEY
from training.run_folder import RunFolder
from training.scores import run_scores

METRICS = ("loss", "eval_loss", "likeness", "editability")
SMOOTHING = 0.9  # the loss is one noisy sample per step: compare its moving average (as the Train tab's "smoothed")


@dataclass
class RunCurves:
    """One run's series by metric: (step, value) points in step order."""

    name: str
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # why its settings could not be read


@dataclass
class Comparison:
    runs: list[RunCurves]
    differing: list[tuple[str, list[Any]]]  # (setting, value in each run), in settings order

    def table(self) -> list[list[Any]]:
        """Rows for a table: setting, then one value per run."""
        return [[key, *(_show(v) for v in values)] for key, values in self.differing]

    def headers(self) -> list[str]:
        return ["setting", *(r.name for r in self.runs)]

    def long_rows(self) -> list[dict[str, Any]]:
        """One row per point ({run, metric, step, value}): the shape chart libraries take."""
        return [{"run": r.name, "metric": m, "step": s, "value": v}
                for r in self.runs for m, pts in r.series.items() for s, v in pts]


def run_curves(run: RunFolder) -> RunCurves:
    curves = RunCurves(run.name)
    smoothed, loss = None, []
    for row in run.read_loss():
        smoothed = row["loss"] if smoothed is None else SMOOTHING * smoothed + (1 - SMOOTHING) * row["loss"]
        loss.append((int(row["step"]), smoothed))
    rs = run_scores(run)
    curves.series = {"loss": loss, "eval_loss": rs.eval_loss,
                     "likeness": [(s.step, s.likeness) for s in rs.trained],
                     "editability": [(s.step, s.editability) for s in rs.trained]}
    try:
        curves.settings = run.read_settings()
    except (OSError, ValueError) as e:
        curves.problem = f"settings.json unreadable: {e}"
    return curves


def compare_runs(runs: Sequence[RunFolder]) -> Comparison:
    """Every run's curves and the settings whose values are not the same in all of them (a
    setting one run lacks counts as differing, shown as None)."""
    curves = [run_curves(r) for r in runs]
    keys: list[str] = []
    for c in curves:
        keys += [k for k in c.settings if k not in keys and k != SCHEMA_KEY]
    differing = []
    for key in keys:
        values = [c.settings.get(key) for c in curves]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            differing.append((key, values))
    return Comparison(curves, differing)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)
