"""The shipped toy weights: where they live and their sha256 manifest.

`manifest.json` lists every weight file with its sha256 and size, plus the build settings and
quality table that produced them. Loading checks the hashes first, so a corrupted or
half-updated checkout fails with a message naming the file instead of loading wrong weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from models.base import ModelError
from workspace.atomic import atomic_write_text

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = "manifest.json"
FILES = ("unet.safetensors", "text_encoder.safetensors", "vae.safetensors", "reader.safetensors", "clip.safetensors")


class ToyWeightsError(ModelError):
    """A shipped toy weight file is missing or does not match its recorded hash."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(folder: Path, info: dict) -> Path:
    files = {name: {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size} for name in FILES}
    path = folder / MANIFEST
    atomic_write_text(path, json.dumps({"files": files, **info}, indent=2) + "\n")
    return path


def read_manifest(folder: Path = WEIGHTS_DIR) -> dict:
    path = folder / MANIFEST
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise ToyWeightsError(f"{path}: cannot read the toy model's manifest ({e.strerror or e})") from e
    except ValueError as e:
        raise ToyWeightsError(f"{path}: not valid JSON ({e})") from e


def verify(folder: Path = WEIGHTS_DIR) -> dict:
    """The manifest, after checking every listed file's size and sha256."""
    manifest = read_manifest(folder)
    for name, want in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise ToyWeightsError(f"{path}: toy model weight file missing (rebuild with python -m models.toy.build)")
        if path.stat().st_size != want["bytes"] or sha256(path) != want["sha256"]:
            raise ToyWeightsError(
                f"{path}: does not match the sha256 in {MANIFEST} (a partial checkout, a Git LFS pointer "
                "or a local change); restore it from git or rebuild with python -m models.toy.build"
            )
    return manifest
