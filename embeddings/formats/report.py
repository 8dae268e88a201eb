"""What `inspect` shows about an embedding file, as JSON-able data (the CLI and the UI both use it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeddings.embedding import FAMILY_WIDTHS


def fitting_families(widths: dict[str, int]) -> list[str]:
    """Model families whose text-encoder widths equal the embedding's, plus "tiny" (the test model, 32)."""
    from models.tiny import TEXT_WIDTH

    fams = [fam for fam, w in FAMILY_WIDTHS.items() if w == dict(widths)]
    if dict(widths) == {"clip_l": TEXT_WIDTH}:
        fams.append("tiny")
    return fams


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Load `path` and describe it: format, name, vectors, widths, step, norms, health, fitting families.

    Raises EmbeddingFileError for files that are not embeddings; NaN/inf files are described
    with `healthy: False`.
    """
    from embeddings.formats import load_embedding

    emb = load_embedding(path)
    report = emb.summary()
    report["file"] = str(path)
    report["format"] = emb.metadata.get("format")
    report["sha256"] = emb.metadata.get("sha256")
    report["fits"] = fitting_families(emb.widths)
    return report
