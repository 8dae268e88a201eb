"""The background worker: one thread owns the accelerator and runs jobs one at a time.

Jobs (training, preprocessing, evaluation) report through an append-only event log that any
number of readers follow by cursor: the web UI polls it, the CLI prints it, tests read it. The
events are typed values (jobs.events); jobs.view folds them into what a viewer shows.
"""

from jobs.events import Event
from jobs.registry import Job, JobInterrupted, JobRegistry, JobState

__all__ = ["Event", "Job", "JobInterrupted", "JobRegistry", "JobState"]
