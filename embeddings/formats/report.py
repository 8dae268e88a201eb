"""What `inspect` shows about an embedding file, as JSON-able data (the CLI and the UI both use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeddings.families import fitting_models
from embeddings.formats import load_embedding


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Load `path` and describe it: format, name, vectors, widths, step, norms, health, fitting families.

    `fits` lists the families and built-in models whose text-encoder widths equal the file's.
    Raises EmbeddingFileError for files that are not embeddings; NaN/inf files are described
    with `healthy: False`.
    """
    emb = load_embedding(path)
    report = emb.summary()
    report["file"] = str(path)
    report["format"] = emb.metadata.get("format")
    report["sha256"] = emb.metadata.get("sha256")
    report["fits"] = fitting_models(emb.widths)
    return report
