"""The planted concept: a shape-colour pair the toy model never saw, as a small TI dataset and a score.

Used by the learning test and the planted-concept benchmark, so both plant the same thing and
score it the same way: eight images of `world.PLANTED` (a blue circle) on different backgrounds,
captioned with their background only, so the embedding has to carry the concept itself; the
score is the share of seeds whose generation the attribute reader sees as the concept.
"""

from __future__ import annotations

import random
from pathlib import Path

from models.toy import world

TEMPLATE = "object_on_filewords"  # the shipped template "a [name] on a [filewords]" (textual_inversion_templates/)
SEEDS = tuple(range(100, 110))
PROMPT_BACKGROUNDS = ("green", "orange", "white", "red", "yellow")  # never the planted colour: the world has no blue-on-blue
THRESHOLD = 0.7  # the share of seeds that must show the concept after training
INIT_TEXT = "shape"  # the toy world's word for any shape ("a red shape on ..."): rarely the planted pair


def make_planted_dataset(folder: Path, n: int = 8, seed: int = 1) -> Path:
    """`n` images + .txt captions ("green background") in `folder`; train them with `TEMPLATE`."""
    folder.mkdir(parents=True, exist_ok=True)
    shape, colour = world.PLANTED
    rng = random.Random(seed)
    for i in range(n):
        scene = world.sample_scene(rng, shape=shape, colour=colour)
        world.render(scene).save(folder / f"{i:02d}.png")
        (folder / f"{i:02d}.txt").write_text(f"{scene.background} background")
    return folder


def concept_rate(model, reader, embedding, seeds=SEEDS, steps: int = 20, cfg: float = 4.0) -> float:
    """Share of `seeds` whose image for "a <embedding> on a <colour> background" shows the planted pair."""
    from embeddings.prompt import generate

    shape, colour = world.PLANTED
    hits = 0
    for i, seed in enumerate(seeds):
        background = PROMPT_BACKGROUNDS[i % len(PROMPT_BACKGROUNDS)]
        image = generate(model, f"a {embedding.name} on a {background} background", [embedding], seed=seed,
                         steps=steps, cfg=cfg)
        hits += reader.read(image).shows(shape=shape, colour=colour)
    return hits / len(seeds)


def main(argv: list[str] | None = None) -> int:
    """`python -m models.toy.planted DIR`: write the planted-concept dataset (for trying the workflow)."""
    import argparse

    p = argparse.ArgumentParser(description="write the toy world's planted-concept dataset (8 images)")
    p.add_argument("folder", type=Path)
    p.add_argument("-n", type=int, default=8)
    args = p.parse_args(argv)
    make_planted_dataset(args.folder, args.n)
    print(f"{args.n} images + captions in {args.folder}; train them with the template {TEMPLATE!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
