"""What a run writes as embeddings: snapshots, the final files, and the copy back into the library.

Kept apart from the loop so the rules for names and places are in one file: snapshot names are
`<name>-000500` (zero-padded to one length, so no two snapshot names of a run shadow each other
in a prompt), the final files go to the run's `final/`, and the trained embedding replaces the
library file it came from only when that file is in a format we write losslessly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from embeddings.embedding import Embedding
from embeddings.formats import save_embedding, writable_formats
from embeddings.names import shadowing_pairs
from training.errors import TrainingError
from training.run_folder import RunFolder
from workspace.atomic import SaveError
from workspace.datadir import DataDir

SNAPSHOT_DIGITS = 6  # <name>-000500: equal-length names never shadow each other in a prompt


def snapshot_name(name: str, step: int) -> str:
    return f"{name}-{step:0{SNAPSHOT_DIGITS}d}"


def save_snapshot(emb: Embedding, run: RunFolder, formats: list[str], step: int, tokenizer,
                  on_error: Callable[[OSError], object] | None = None) -> list[str]:
    """`snapshots/<name>-<step>.<fmt>`; the embedding inside is named like the file, so it loads
    as its own embedding beside the final one. Names are zero-padded to one length, so no two
    snapshot names of a run shadow each other in a prompt (checked).

    `on_error`: given a file that cannot be written (a `SaveError` naming it), the other formats
    are still saved and the error is passed to it; without it the error is raised."""
    snap_name = snapshot_name(emb.name, step)
    snap = emb.copy(name=snap_name)
    others = {p.name.split(".")[0] for p in run.snapshot_files()} | {snap_name}
    pairs = shadowing_pairs(tokenizer, sorted(n for n in others if n.startswith(f"{emb.name}-")))
    if pairs:
        raise TrainingError(f"snapshot names would shadow each other in prompts: {pairs[:3]}")
    saved = []
    for fmt in kept_formats(emb, formats):
        target = run.image_embeddings / f"{snap_name}.png" if fmt == "png" else run.snapshots / f"{snap_name}.{fmt}"
        try:
            saved.append(str(save_embedding(snap, target, fmt=fmt)))
        except OSError as e:
            if on_error is None:
                raise
            on_error(SaveError.from_os_error(target, e))
    return saved


def snapshot_steps(run: RunFolder) -> list[int]:
    """The steps the run has a snapshot of (any format), in order."""
    steps = set()
    for p in [*run.snapshot_files(), *run.image_embeddings.glob("*.png")]:
        tail = p.name.split(".")[0].rsplit("-", 1)[-1]
        if len(tail) == SNAPSHOT_DIGITS and tail.isdigit():
            steps.add(int(tail))
    return sorted(steps)


def find_snapshot(run: RunFolder, step: int) -> Path:
    """The snapshot file of `step` (.safetensors first, then .pt, then the PNG embedding);
    TrainingError naming the steps there are when there is none."""
    for p in sorted(run.snapshot_files(), key=lambda p: (p.suffix != ".safetensors", p.suffix != ".pt", p.name)):
        if p.name.split(".")[0].endswith(f"-{step:0{SNAPSHOT_DIGITS}d}"):
            return p
    for p in sorted(run.image_embeddings.glob(f"*-{step:0{SNAPSHOT_DIGITS}d}.png")):
        return p
    have = ", ".join(str(s) for s in snapshot_steps(run)) or "none"
    raise TrainingError(f"{run.name}: no snapshot at step {step} (snapshots at: {have})")


def save_final(emb: Embedding, run: RunFolder, formats: list[str]) -> dict[str, str]:
    """One file per format in the run's `final/`, named like the embedding."""
    return {fmt: str(save_embedding(emb, run.final / f"{emb.name}.{fmt}", fmt=fmt))
            for fmt in kept_formats(emb, formats)}


def kept_formats(emb: Embedding, formats: list[str]) -> list[str]:
    """The chosen formats that can hold `emb` (a kind without a standard part: .safetensors only, which
    is then always written, so the run keeps its files)."""
    ok = writable_formats(emb)
    return [f for f in formats if f in ok] or (ok[:1] if formats else [])


def save_to_library(emb: Embedding, source: Path | None, data_dir: DataDir) -> Path:
    """The trained embedding goes back to the embeddings folder, atomically replacing the file it
    came from when that file is there and in a writable format (.safetensors/.pt); otherwise it is
    written as `<embeddings>/<name>.safetensors`. The original is kept in the run's original/."""
    root = data_dir.embeddings.resolve()
    if source is not None and source.suffix in (".safetensors", ".pt") and root in source.resolve().parents:
        return Path(save_embedding(emb, source))
    return Path(save_embedding(emb, root / f"{emb.name}.safetensors"))
