"""The one error a training run raises to its caller (the job shows its message as the failure)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot start or had to stop. The message says why and what to do."""
