"""One loaded base model per process, shared by the worker (training) and the UI (generate).

Loading an SD model takes seconds and gigabytes; loading it twice (once for the Generate tab,
once for the training job) can run a GPU out of memory. The cache keeps the most recently
used model only: asking for another one drops the old one first.
"""

from __future__ import annotations

import gc
import threading

import torch

from models.base import BaseModel
from models.load import load_base_model
from workspace.datadir import DataDir

_lock = threading.Lock()
_current: tuple[tuple[str, str], BaseModel] | None = None


def get_model(spec: str, data_dir: DataDir) -> BaseModel:
    """The model for `spec` (as models.load.load_base_model reads it), loaded at most once."""
    global _current
    key = ((spec or "").strip(), str(data_dir.root))
    with _lock:
        if _current is not None and _current[0] == key:
            return _current[1]
        if _current is not None:
            _current = None
            gc.collect()
            _empty_accelerator_cache()
        model = load_base_model(spec, data_dir)
        _current = (key, model)
        return model


def clear() -> None:
    global _current
    with _lock:
        _current = None
    gc.collect()
    _empty_accelerator_cache()


def _empty_accelerator_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
