"""Short hashes of weight files, the way A1111 records `sd_checkpoint` (first 10 hex of SHA-256).

Hashing a multi-GB checkpoint takes seconds, so results are cached by (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from workspace.atomic import atomic_write_text

_lock = threading.Lock()
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth")


def _cache_file(cache_dir: Path | None) -> Path | None:
    return cache_dir / "hashes.json" if cache_dir else None


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    path = Path(path).resolve()
    st = path.stat()
    key = f"{path}|{st.st_size}|{st.st_mtime_ns}"
    cache_path = _cache_file(cache_dir)
    cache: dict[str, str] = {}
    if cache_path and cache_path.is_file():
        try:
            cache = json.loads(cache_path.read_text())
        except (OSError, ValueError):
            cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if cache_path:
        with _lock:
            cache[key] = digest
            atomic_write_text(cache_path, json.dumps(cache, indent=0))
    return digest


def short_hash(path: Path, cache_dir: Path | None = None) -> str:
    """10 hex digits: of the file, or for a folder, of its weight files' hashes in path order."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path, cache_dir)[:10]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p, cache_dir).encode())
    return h.hexdigest()[:10]
