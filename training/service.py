"""Training as a job on the worker: start, interrupt, resume, list runs.

The UI and the CLI both come through here, so a run started from either behaves the same: the
config is validated before anything is queued (bad schedule syntax is an error now, not an hour
later), the run folder exists from the moment the job is queued (its events.jsonl is the job's
log), and the base model comes from one process-wide cache so the Generate tab and the worker
share one loaded copy.

The loop (`training.trainer`, which imports diffusers) is imported when a run starts, not when
the UI imports this module: starting the app stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs import events
from jobs.registry import Job, JobRegistry
from models.cache import get_model
from training.config import TrainConfig
from training.distributed import DistContext
from training.run_folder import RunFolder, list_runs
from workspace.datadir import DataDir


@dataclass(frozen=True)
class RunPlan:
    """A run about to be started or resumed: its settings, its folder, and whether it resumes.

    Made by `plan_start` / `plan_resume`; both the worker job (UI, `app.py train`) and the
    data-parallel launcher run it with `execute`, so they cannot start or resume differently."""

    config: TrainConfig
    run: RunFolder
    resume: bool


def plan_start(config: TrainConfig, data_dir: DataDir) -> RunPlan:
    """Validate (bad schedule syntax is an error now, not an hour later), create the run folder
    and save the settings in it."""
    config.validate()
    run = RunFolder.create(data_dir.ensure().runs, _embedding_stem(config), config.run_name)
    config.save(run.settings_path)
    return RunPlan(config, run, resume=False)


def plan_resume(run_dir: str | Path, data_dir: DataDir, **overrides: Any) -> RunPlan:
    """Continue a run from its resume bundle (exact), with optional setting changes such as
    `max_steps=...`. Without a bundle the run's latest embedding continues in a new run folder
    with a fresh optimizer."""
    run = RunFolder(Path(run_dir))
    config = TrainConfig.load(run.settings_path)
    if overrides:
        config = config.replace(**overrides)
    if run.bundle_path.is_file():
        config.validate()
        return RunPlan(config, run, resume=True)
    return plan_start(config.replace(run_name=""), data_dir)


def execute(plan: RunPlan, data_dir: DataDir, job: Job, dist: DistContext | None = None) -> dict[str, Any]:
    """Load the base model (from the process-wide cache) and run the loop."""
    from training.trainer import train

    job.message(f"loading base model {plan.config.model}")
    job.progress(0, 1, phase="loading")
    model = get_model(plan.config.model, data_dir)
    return train(plan.config, model, data_dir, job, run=plan.run, resume=plan.resume, dist=dist)


def start_training(registry: JobRegistry, config: TrainConfig, data_dir: DataDir) -> Job:
    """Queue a training run. The job's first events say whether it waits behind other jobs."""
    return submit(registry, plan_start(config, data_dir), data_dir)


def resume_training(registry: JobRegistry, run_dir: str | Path, data_dir: DataDir, **overrides: Any) -> Job:
    """Queue the continuation of a run (see `plan_resume`)."""
    return submit(registry, plan_resume(run_dir, data_dir, **overrides), data_dir)


def interrupt(job: Job) -> None:
    """Cooperative stop: the loop finishes the current step, saves a resumable snapshot and ends."""
    job.request_stop()


def runs(data_dir: DataDir) -> list[dict[str, Any]]:
    """Summaries of the run folders, newest first (for the UI's run list and `train --list`)."""
    return [r.describe() for r in list_runs(data_dir.runs)]


def submit(registry: JobRegistry, plan: RunPlan, data_dir: DataDir) -> Job:
    """Queue `plan` on the worker; its events.jsonl is the job's log from the first event."""
    ahead = len(registry.active())
    title = f"resume {plan.run.name}" if plan.resume else f"train {_embedding_stem(plan.config)} ({plan.run.name})"
    job = registry.submit("train", title, lambda job: execute(plan, data_dir, job), log_path=plan.run.events_path)
    if ahead:
        job.message(f"queued: waiting for {ahead} job(s) ahead of this one")
    job.emit(events.Files(paths=[plan.run.path], what=events.Files.RUN_FOLDER))
    return job


def _embedding_stem(config: TrainConfig) -> str:
    return Path(config.embedding).stem if config.embedding else "embedding"
