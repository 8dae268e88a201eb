"""Training as a job on the worker: start, interrupt, resume, list runs.

The UI and the CLI both come through here, so a run started from either behaves the same: the
config is validated before anything is queued (bad schedule syntax is an error now, not an hour
later), the run folder exists from the moment the job is queued (its events.jsonl is the job's
log), and the base model comes from one process-wide cache so the Generate tab and the worker
share one loaded copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jobs.registry import Job, JobRegistry
from models.cache import get_model
from training.config import TrainConfig
from training.run_folder import RunFolder, list_runs
from workspace.datadir import DataDir


def start_training(registry: JobRegistry, config: TrainConfig, data_dir: DataDir) -> Job:
    """Queue a training run. The job's first events say whether it waits behind other jobs."""
    config.validate()
    name = Path(config.embedding).stem if config.embedding else "embedding"
    run = RunFolder.create(data_dir.ensure().runs, name, config.run_name)
    config.save(run.settings_path)
    return _submit(registry, config, data_dir, run, resume=False, title=f"train {name} ({run.name})")


def resume_training(registry: JobRegistry, run_dir: str | Path, data_dir: DataDir, **overrides: Any) -> Job:
    """Continue a run from its resume bundle (exact), with optional setting changes such as
    `max_steps=...`. Without a bundle the run's latest embedding continues with a fresh optimizer."""
    run = RunFolder(Path(run_dir))
    config = TrainConfig.load(run.settings_path)
    if overrides:
        config = config.replace(**overrides)
    if run.bundle_path.is_file():
        return _submit(registry, config, data_dir, run, resume=True, title=f"resume {run.name}")
    config = config.replace(run_name="")
    return start_training(registry, config, data_dir)


def interrupt(job: Job) -> None:
    """Cooperative stop: the loop finishes the current step, saves a resumable snapshot and ends."""
    job.request_stop()


def runs(data_dir: DataDir) -> list[dict[str, Any]]:
    """Summaries of the run folders, newest first (for the UI's run list and `train --list`)."""
    return [r.describe() for r in list_runs(data_dir.runs)]


def _submit(registry: JobRegistry, config: TrainConfig, data_dir: DataDir, run: RunFolder, *, resume: bool,
            title: str) -> Job:
    def work(job: Job) -> dict[str, Any]:
        from training.trainer import train

        job.message(f"loading base model {config.model}")
        model = get_model(config.model, data_dir)
        return train(config, model, data_dir, job, run=run, resume=resume)

    ahead = len(registry.active())
    job = registry.submit("train", title, work, log_path=run.events_path)
    if ahead:
        job.message(f"queued: waiting for {ahead} job(s) ahead of this one")
    job.emit("files", step=None, paths=[str(run.path)], what="run folder")
    return job
