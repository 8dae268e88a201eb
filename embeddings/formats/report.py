"""What `inspect` shows about an embedding file, as JSON-able data (the CLI and the UI both use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeddings.families import fitting_models
from embeddings.formats import load_embedding
from embeddings.kinds import kind_of


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Load `path` and describe it: format, name, kind, vectors, widths, step, norms, health, fitting families.

    `norms` are the standard part's; a per-layer embedding adds `kind_details` (grouping, groups,
    which standard part, norms per group) from its kind.

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
    details = {k: v for k, v in kind_of(emb).describe(emb).items() if k != "kind"}
    if details:
        report["kind_details"] = details
    return report
