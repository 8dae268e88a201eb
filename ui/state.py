"""The app context every tab shares: the data folder, the job registry and the loaded models.

There is one context per server process, on purpose: this is a single-user local tool, so a job
started in one browser tab must be visible from every other tab and after a reload. Per-tab
things (an event cursor) live in `gr.State`, never here. No Gradio import in this module, so the
tabs' logic can be tested without a browser.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embeddings.embedding import EmbeddingError
from embeddings.library import EmbeddingLibrary
from jobs.registry import JobRegistry
from models.cache import get_model
from models.discovery import BUILTIN_NOTE, ModelInfo, discover_models
from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer
from workspace.datadir import DataDir

log = logging.getLogger(__name__)

BUILTIN_TAG = "(built-in, random weights: for trying the workflow)"
TINY_LABEL = f"tiny {BUILTIN_TAG}"


@dataclass
class ModelChoice:
    """One entry of a base-model dropdown: what the user sees and what `load_base_model` takes."""

    label: str
    spec: str


@dataclass
class AppContext:
    """Everything the UI shares across tabs and browser sessions."""

    data: DataDir
    registry: JobRegistry = field(default_factory=JobRegistry)
    default_model: str | None = None
    _model_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _libraries: dict[Any, Any] = field(default_factory=dict, repr=False)
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # --- base models -----------------------------------------------------------------------
    def model_choices(self) -> list[ModelChoice]:
        """The built-in models first, then the data folder's models and the Hugging Face cache
        (`models.discovery`). If reading those folders fails, the built-in tiny model is still offered."""
        try:
            choices = [ModelChoice(_model_label(info), info.spec) for info in discover_models(self.data)]
        except Exception:  # an unreadable folder must not take the page down
            log.exception("model discovery failed")
            choices = [ModelChoice(TINY_LABEL, "tiny")]
        if self.default_model and not any(c.spec == self.default_model for c in choices):
            choices.insert(0, ModelChoice(f"{self.default_model} (from --model)", self.default_model))
        return choices

    def default_model_spec(self) -> str:
        return self.default_model or "tiny"

    def model(self, spec: str):
        """The base model, from the process-wide cache the training worker also uses (one copy)."""
        spec = (spec or "").strip() or self.default_model_spec()
        log.info("base model %s", spec)
        return get_model(spec, self.data)

    def tokenizer(self):
        """The CLIP tokenizer all SD families share, for live token counts before a model loads."""
        # Locked: several live-preview events arrive at once on page load, and transformers'
        # lazy imports are not thread-safe ("cannot import name 'CLIPTokenizer'").
        with self._tokenizer_lock:
            if self._tokenizer is None:
                folder = write_clip_tokenizer(self.data.cache / "tokenizers" / "clip")
                self._tokenizer = load_clip_tokenizer(folder)
            return self._tokenizer

    # --- embeddings --------------------------------------------------------------------------
    def library(self, model=None) -> EmbeddingLibrary:
        """The embeddings library, checked against `model`'s encoder widths (None: not checked).

        One library per width set, kept between calls, so unchanged files are not re-read.
        """
        widths = model.widths if model is not None else None
        key = tuple(sorted(widths.items())) if widths else None
        with self._model_lock:
            lib = self._libraries.get(key)
            if lib is None:
                tokenizer = model.tokenizers[0] if model is not None else None
                lib = self._libraries[key] = EmbeddingLibrary.for_data(self.data, widths, tokenizer)
        lib.refresh()
        return lib

    def usable_embeddings(self, model) -> tuple[list[Any], list[tuple[str, str]]]:
        """(embeddings that fit `model`, [(name, why skipped)]) for prompts and previews."""
        lib = self.library(model)
        return list(lib.loaded().values()), [(e.name, e.reason or "") for e in lib.skipped()]

    def embedding_names(self) -> list[str]:
        """Names of the usable embeddings in the library (any sub-folder), for pickers."""
        return sorted({e.name for e in self.library(None).entries() if e.ok}, key=str.casefold)

    def existing_embedding(self, name: str) -> Path | None:
        """The library file the name `name` already means (the library's resolver), or None."""
        lib = self.library(None)
        try:
            path = lib.resolve(name).path
        except EmbeddingError:
            return None
        root = lib.folder.resolve()
        return path if root in path.resolve().parents else None  # never a file outside the library

    # --- folders ---------------------------------------------------------------------------

    def datasets(self) -> list[str]:
        folder = self.data.datasets
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _model_label(info: ModelInfo) -> str:
    """The dropdown label: name, [family, kind], and a note on the built-in random-weight models."""
    parts = [info.name, f"[{', '.join(x for x in (info.family, info.kind) if x)}]"]
    if info.kind == "builtin":
        parts.append(BUILTIN_TAG if info.note == BUILTIN_NOTE else f"({info.note})")
    return " ".join(parts)
