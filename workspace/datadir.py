"""The one data folder that holds everything a user makes: never inside the code packages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("data")


@dataclass(frozen=True)
class DataDir:
    """Paths under the data folder. Sub-folders are created on first use by `ensure()`."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> "DataDir":
        return cls(Path(root if root is not None else DEFAULT_DATA_DIR).expanduser().resolve())

    @property
    def embeddings(self) -> Path:
        return self.root / "embeddings"

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        """User-provided base models: single-file checkpoints and diffusers folders."""
        return self.root / "models"

    @property
    def templates(self) -> Path:
        """The user's own prompt templates; they win over the shipped ones with the same name."""
        return self.root / "templates"

    @property
    def cache(self) -> Path:
        """Things we can rebuild: the tiny model, latents, exports for download."""
        return self.root / "cache"

    @property
    def exports(self) -> Path:
        return self.cache / "exports"

    def ensure(self) -> "DataDir":
        for p in (self.embeddings, self.datasets, self.runs, self.models, self.templates, self.cache):
            p.mkdir(parents=True, exist_ok=True)
        return self
