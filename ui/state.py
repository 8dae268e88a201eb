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

from jobs.registry import JobRegistry
from workspace.datadir import DataDir

log = logging.getLogger(__name__)

TINY_LABEL = "tiny (built-in, random weights: for trying the workflow)"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".png", ".webp")


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
        """The built-in models first, then what the models engineer's discovery finds.

        Falls back to listing `data/models` when discovery is not available, so the picker
        works from the first day.
        """
        choices: list[ModelChoice] = []
        try:
            from models.discovery import discover_models

            for info in discover_models(self.data):
                choices.append(ModelChoice(_model_label(info), str(info.spec)))
        except ImportError:
            choices.append(ModelChoice(TINY_LABEL, "tiny"))
            if self.data.models.is_dir():
                for p in sorted(self.data.models.iterdir()):
                    if p.is_dir() and (p / "model_index.json").is_file():
                        choices.append(ModelChoice(f"{p.name} (diffusers folder)", str(p)))
                    elif p.suffix.lower() in (".safetensors", ".ckpt"):
                        choices.append(ModelChoice(f"{p.name} (checkpoint)", str(p)))
        except Exception:  # discovery must never take the page down
            log.exception("model discovery failed")
            choices.append(ModelChoice(TINY_LABEL, "tiny"))
        if not any(c.spec == "tiny" for c in choices):
            choices.insert(0, ModelChoice(TINY_LABEL, "tiny"))
        if self.default_model and not any(c.spec == self.default_model for c in choices):
            choices.insert(0, ModelChoice(f"{self.default_model} (from --model)", self.default_model))
        return choices

    def default_model_spec(self) -> str:
        return self.default_model or "tiny"

    def model(self, spec: str):
        """The base model, from the process-wide cache the training worker also uses (one copy)."""
        from models.cache import get_model

        spec = (spec or "").strip() or self.default_model_spec()
        log.info("base model %s", spec)
        return get_model(spec, self.data)

    def tokenizer(self):
        """The CLIP tokenizer all SD families share, for live token counts before a model loads."""
        # Locked: several live-preview events arrive at once on page load, and transformers'
        # lazy imports are not thread-safe ("cannot import name 'CLIPTokenizer'").
        with self._tokenizer_lock:
            if self._tokenizer is None:
                from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer

                folder = write_clip_tokenizer(self.data.cache / "tokenizers" / "clip")
                self._tokenizer = load_clip_tokenizer(folder)
            return self._tokenizer

    # --- embeddings --------------------------------------------------------------------------
    def library(self, model=None):
        """The embeddings library, checked against `model`'s encoder widths (None: not checked).

        One library per width set, kept between calls, so unchanged files are not re-read.
        """
        from embeddings.library import EmbeddingLibrary

        widths = model.widths if model is not None else None
        key = tuple(sorted(widths.items())) if widths else None
        with self._model_lock:
            lib = self._libraries.get(key)
            if lib is None:
                tokenizer = model.tokenizers[0] if model is not None else None
                lib = self._libraries[key] = EmbeddingLibrary(self.data.embeddings, widths, tokenizer)
        lib.refresh()
        return lib

    def usable_embeddings(self, model) -> tuple[list[Any], list[tuple[str, str]]]:
        """(embeddings that fit `model`, [(name, why skipped)]) for prompts and previews."""
        lib = self.library(model)
        return list(lib.loaded().values()), [(e.name, e.reason or "") for e in lib.skipped()]

    # --- folders ---------------------------------------------------------------------------
    def embedding_files(self) -> list[Path]:
        folder = self.data.embeddings
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)

    def existing_embedding(self, name: str) -> Path | None:
        """A file in the library whose stem is `name` (case-insensitive, as prompts match)."""
        low = name.strip().lower()
        for p in self.embedding_files():
            if p.stem.lower() == low or p.name.lower().split(".")[0] == low:
                return p
        return None

    def datasets(self) -> list[str]:
        folder = self.data.datasets
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _model_label(info: Any) -> str:
    """A readable dropdown label from a discovery record, whatever fields it has."""
    name = getattr(info, "name", None) or str(getattr(info, "spec", "?"))
    parts = [name]
    family = getattr(info, "family", None)
    kind = getattr(info, "kind", None)
    extra = ", ".join(str(x) for x in (family, kind) if x)
    if extra:
        parts.append(f"[{extra}]")
    if getattr(info, "random_weights", False) or str(getattr(info, "spec", "")).startswith("tiny"):
        parts.append("(built-in, random weights: for trying the workflow)")
    return " ".join(parts)
