"""The one data folder that holds everything a user makes: never inside the code packages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("data")


class DatasetNotFoundError(FileNotFoundError):
    """No dataset folder by the path or name given. The message names where it was looked for."""


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

    def find_dataset(self, spec: str) -> Path:
        """The dataset folder `spec` means: the one answer the trainer and the Train tab use.

        First match: a folder path, absolute or relative to `datasets/` (so a plain name is a
        dataset made in the Preprocess tab); then a folder path relative to the working directory.
        The data folder's own dataset wins over a stray folder of that name where the program runs.
        """
        spec = (spec or "").strip()
        if not spec:
            raise DatasetNotFoundError("no dataset folder given")
        given = Path(spec).expanduser()
        for folder in (self.datasets / given, given):
            if folder.is_dir():
                return folder
        raise DatasetNotFoundError(f"dataset {spec!r}: no such folder (nor in {self.datasets})")

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
