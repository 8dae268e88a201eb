"""The one data folder that holds everything a user makes: never inside the code packages.

An existing install (A1111 / Forge, ComfyUI) keeps its checkpoints and embeddings where they are:
folders named with `--models-dir` / `--embeddings-dir` (repeatable) or in the data folder's
`settings.toml` are read in place, nothing is copied:

    # <data folder>/settings.toml
    models_dirs = ["/home/me/stable-diffusion-webui/models/Stable-diffusion"]
    embeddings_dirs = ["/home/me/stable-diffusion-webui/embeddings"]

The first embeddings folder is where new and trained embeddings are saved (so they are ready in
the tool the user generates with); the data folder's own `embeddings/` is still read.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = Path("data")
SETTINGS_FILE = "settings.toml"
FOLDER_KEYS = ("models_dirs", "embeddings_dirs")


class DatasetNotFoundError(FileNotFoundError):
    """No dataset folder by the path or name given. The message names where it was looked for."""


class SettingsError(ValueError):
    """The data folder's settings file cannot be used; the message names the file and the key."""


def read_folder_settings(path: Path) -> dict[str, list[Path]]:
    """The folder lists of a settings file ({} when there is none). Relative paths are relative to
    the file's folder; keys this version does not know are left for others."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise SettingsError(f"{path}: not readable as TOML ({e})") from None
    out: dict[str, list[Path]] = {}
    for key in FOLDER_KEYS:
        value = data.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{path}: {key} must be a list of folder paths, e.g. {key} = [\"/path/to/folder\"]")
        out[key] = [(path.parent / Path(v).expanduser()).resolve() for v in value]
    return out


def _unique(paths: Iterable[Path]) -> tuple[Path, ...]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return tuple(out)


@dataclass(frozen=True)
class DataDir:
    """Paths under the data folder, and the other installs' folders read in place. Sub-folders
    are created on first use by `ensure()`."""

    root: Path
    models_dirs: tuple[Path, ...] = ()  # other checkpoint folders, read in place
    embeddings_dirs: tuple[Path, ...] = ()  # other embeddings folders; the first one receives new files

    @classmethod
    def at(cls, root: str | Path | None = None, *, models_dirs: Iterable[str | Path] = (),
           embeddings_dirs: Iterable[str | Path] = ()) -> "DataDir":
        """The data folder at `root`, with the folders given (command-line flags) first, then those
        of its settings file."""
        root_path = Path(root if root is not None else DEFAULT_DATA_DIR).expanduser().resolve()
        saved = read_folder_settings(root_path / SETTINGS_FILE)
        given = {"models_dirs": models_dirs, "embeddings_dirs": embeddings_dirs}
        folders = {key: _unique([*(Path(p).expanduser().resolve() for p in given[key]), *saved.get(key, [])])
                   for key in FOLDER_KEYS}
        return cls(root_path, **folders)

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def embeddings(self) -> Path:
        """Where new and trained embeddings are saved: the first other embeddings folder if one is
        named (the one the user generates from), else the data folder's own."""
        return self.embeddings_dirs[0] if self.embeddings_dirs else self.root / "embeddings"

    @property
    def embedding_folders(self) -> list[Path]:
        """Every embeddings folder the library reads, `embeddings` first."""
        return list(_unique([self.embeddings, self.root / "embeddings", *self.embeddings_dirs]))

    @property
    def model_folders(self) -> list[Path]:
        """Every folder searched for checkpoints and diffusers folders, the data folder's first."""
        return list(_unique([self.models, *self.models_dirs]))

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
        for p in (self.root / "embeddings", self.embeddings, self.datasets, self.runs, self.models, self.templates,
                  self.cache):
            p.mkdir(parents=True, exist_ok=True)
        return self
