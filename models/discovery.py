"""Which base models can be used here, found cheaply: names, families and sizes, no weights loaded.

Sources, in the order listed: the built-in random-weight models, the data folder's `models/`
(single-file checkpoints and diffusers folders, any depth), and diffusers models already in the
local Hugging Face cache. Every `ModelInfo.spec` is exactly what `load_base_model` accepts, so a
UI picker or the CLI can pass it straight through.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from embeddings.families import BUILTIN_MODELS, family_for_text_encoders
from models.base import RANDOM_WEIGHTS_NOTE, ModelError
from models.load import SINGLE_FILE_SUFFIXES, hf_cache_dir
from models.single_file import detect_family, read_safetensors_header
from workspace.datadir import DataDir

BUILTIN_NOTE = RANDOM_WEIGHTS_NOTE


@dataclass
class ModelInfo:
    """One usable base model. `kind`: builtin, diffusers, single-file or hub-cache."""

    name: str
    spec: str  # pass to models.load.load_base_model
    kind: str
    family: str | None = None  # sd1 / sd2 / sdxl when known without loading
    path: str | None = None
    size: int | None = None  # bytes on disk
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Skipped:
    """A weight file in the models folder that is not a usable checkpoint, and why."""

    path: str
    reason: str


def discover_models(
    data_dir: DataDir, *, hf_cache: Path | None = None, skipped: list[Skipped] | None = None
) -> list[ModelInfo]:
    """Built-ins, then `data_dir.models` (sorted by path), then the HF cache (sorted by id).

    Files that look like weights but are not full checkpoints (LoRAs, VAEs, embeddings, broken
    downloads) are left out; pass `skipped=[]` to learn which and why.
    """
    found = [
        ModelInfo(name=b.name, spec=b.name, kind="builtin", family=b.family, note=b.label or BUILTIN_NOTE)
        for b in BUILTIN_MODELS.values()
    ]
    for folder in data_dir.model_folders:  # the data folder's, then other installs' (read in place)
        found += scan_models_folder(folder, skipped)
    found += scan_hf_cache(hf_cache or hf_cache_dir())
    return found


def scan_models_folder(folder: Path, skipped: list[Skipped] | None = None) -> list[ModelInfo]:
    out: list[ModelInfo] = []
    if not folder.is_dir():
        return out
    for root, dirs, files in os.walk(folder, followlinks=True):
        base = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "model_index.json" in files:
            dirs[:] = []  # its sub-folders are components, not models
            out.append(_diffusers_info(base, base.relative_to(folder).as_posix() or base.name, "diffusers"))
            continue
        for fname in sorted(files):
            path = base / fname
            if fname.startswith(".") or path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                continue
            info = _single_file_info(path, path.relative_to(folder).as_posix(), skipped)
            if info is not None:
                out.append(info)
    return sorted(out, key=lambda m: m.name)


def _single_file_info(path: Path, name: str, skipped: list[Skipped] | None) -> ModelInfo | None:
    try:
        size = path.stat().st_size
    except OSError:
        return None
    family, note = None, ""
    if path.suffix.lower() == ".safetensors":
        try:
            shapes, _ = read_safetensors_header(path)
            family = detect_family(shapes, path.name)
        except ModelError as e:
            if skipped is not None:
                skipped.append(Skipped(str(path), str(e)))
            return None
    else:
        note = "family known after loading (.ckpt)"
    return ModelInfo(name=name, spec=str(path), kind="single-file", family=family, path=str(path), size=size, note=note)


def folder_family(folder: Path) -> str | None:
    """sd1 / sd2 / sdxl from a diffusers folder's JSON files, or None if they do not say."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
        if index.get("text_encoder_2") not in (None, [None, None]):
            return "sdxl"
        te = json.loads((folder / "text_encoder" / "config.json").read_text())
    except (OSError, ValueError, AttributeError):
        return None
    width = te.get("hidden_size")
    if not isinstance(width, int):
        return None
    # The loader's rule, so a folder lists as the family it loads as.
    return family_for_text_encoders(width, 1)


def _folder_size(folder: Path) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except OSError:
            continue
    return total


def _diffusers_info(folder: Path, name: str, kind: str, spec: str | None = None) -> ModelInfo:
    family = folder_family(folder)
    note = "" if family else "family unknown until loaded"
    if (folder / "tiny_model.json").is_file():
        note = BUILTIN_NOTE
    return ModelInfo(
        name=name, spec=spec or str(folder), kind=kind, family=family, path=str(folder),
        size=_folder_size(folder), note=note,
    )


def scan_hf_cache(cache: Path) -> list[ModelInfo]:
    """`models--owner--name` repos in the hub cache with a diffusers snapshot (model_index.json)."""
    out: list[ModelInfo] = []
    if not cache.is_dir():
        return out
    for repo in sorted(cache.glob("models--*")):
        snapshot = _best_snapshot(repo)
        if snapshot is None:
            continue
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        out.append(_diffusers_info(snapshot, repo_id, "hub-cache", spec=repo_id))
    return out


def _best_snapshot(repo: Path) -> Path | None:
    """The snapshot `refs/main` points at, else the newest one holding a model_index.json."""
    ref = repo / "refs" / "main"
    if ref.is_file():
        try:
            snap = repo / "snapshots" / ref.read_text().strip()
            if (snap / "model_index.json").is_file():
                return snap
        except OSError:
            pass
    candidates = [s for s in (repo / "snapshots").glob("*") if (s / "model_index.json").is_file()]
    return max(candidates, key=lambda s: s.stat().st_mtime) if candidates else None
