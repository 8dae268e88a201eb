"""Promote: copy one snapshot of a run into the embeddings library under a name the user picks.

The copy is an ordinary embedding file named like the name (so it is used by that name in
prompts, here and in other tools), and its metadata says where it came from: the run, the
step, the snapshot file and the scores the run holds for that step (likeness, editability, eval
loss), plus whether it was the suggested step and why. The library's own rules apply (a name
already used by another file is refused, never overwritten).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from embeddings.embedding import EmbeddingError
from embeddings.formats import load_embedding, save_embedding
from embeddings.library import EmbeddingLibrary, LibraryEntry
from embeddings.names import clean_name
from training.outputs import find_snapshot
from training.run_folder import RunFolder
from training.scores import run_scores
from workspace.datadir import DataDir


def step_scores(run: RunFolder, step: int) -> dict[str, Any]:
    """What the run folder knows about `step`: likeness/editability (scores.csv), eval_loss
    (eval.csv), and the suggestion when it chose this step."""
    rs = run_scores(run)
    out: dict[str, Any] = {}
    for s in rs.trained:
        if s.step == step:
            out.update(likeness=s.likeness, editability=s.editability)
    for st, loss in rs.eval_loss:
        if st == step:
            out["eval_loss"] = loss
    if rs.baseline is not None:
        out["untrained_editability"] = rs.baseline.editability
    if rs.suggestion.step == step:
        out["suggested"] = rs.suggestion.words
    return out


def promote(run: RunFolder, step: int, name: str, data_dir: DataDir) -> LibraryEntry:
    """Copy the snapshot of `step` into the library as `name` (.safetensors). Returns its entry."""
    name = (name or "").strip()
    if not name or clean_name(name) != name:
        raise EmbeddingError(f"name {name!r}: use letters, digits, '.', '_', '-' and spaces"
                             + (f" (try {clean_name(name)!r})" if clean_name(name) else ""))
    source = find_snapshot(run, step)
    emb = load_embedding(source)
    meta = {**emb.metadata, "promoted_from": {"run": run.name, "run_dir": str(run.path), "step": step,
                                              "snapshot": source.name, "scores": step_scores(run, step)}}
    copy = emb.copy(name=name, metadata=meta)
    library = EmbeddingLibrary.for_data(data_dir)
    with tempfile.TemporaryDirectory(dir=data_dir.ensure().cache) as tmp:
        staged = save_embedding(copy, Path(tmp) / f"{name}.safetensors", fmt="safetensors")
        return library.add_file(staged, filename=f"{name}.safetensors")
