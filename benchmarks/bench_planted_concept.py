"""Planted concept: how many steps and seconds a trainer needs before the toy model shows a concept it never saw.

    python benchmarks/bench_planted_concept.py [--steps 200] [--every 20] [--lr 0.02 0.05] \
        [--kinds standard per-layer] [--grouping block]

The concept is `world.PLANTED` (a blue circle: both words known to the toy model, the pair never
shown), taught from eight images captioned with their background only (models/toy/planted.py).
Each row trains one embedding through the real trainer, saving a snapshot every `--every`
steps; afterwards every snapshot generates `len(SEEDS)` images and the attribute reader says
how many show the concept. "steps to X%" is the first snapshot at or above the learning
test's threshold; "seconds" is the training time to that step (the trainer's own elapsed time,
scaled by steps; snapshot scoring is not counted). A script that prints a table, never a test.
One row per kind and learning rate: `per-layer` starts every layer group at the same init
vectors as the standard row (`--grouping` picks the groups) and is scored the same way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(kind: str, lr: str, steps: int, every: int, vectors: int, batch: int, grouping: str) -> dict:
    from embeddings.create import create_embedding
    from embeddings.formats import load_embedding, save_embedding
    from embeddings.kinds import get_kind
    from jobs.registry import Job
    from models.load import load_base_model
    from models.toy import load_reader
    from models.toy.planted import INIT_TEXT, TEMPLATE, THRESHOLD, concept_rate, make_planted_dataset
    from training.config import TrainConfig
    from training.trainer import train
    from workspace.datadir import DataDir

    with tempfile.TemporaryDirectory() as tmp:
        data = DataDir.at(Path(tmp) / "data").ensure()
        model = load_base_model("toy", data)
        reader = load_reader()
        dataset = make_planted_dataset(Path(tmp) / "planted")
        init = create_embedding(model, "planted", INIT_TEXT, vectors)
        if kind != "standard":
            k = get_kind(kind)
            init = k.make(init, model.unet, model=model, **{o.name: grouping for o in k.options if o.name == "grouping"})
        save_embedding(init, data.embeddings / "planted.safetensors")
        config = TrainConfig.from_dict(dict(
            embedding="planted", dataset=str(dataset), model="toy", resolution=64, bucket_step=8, min_bucket=32,
            max_bucket=128, lr=lr, lr_kind="constant", max_steps=steps, batch_size=batch, save_every=every,
            preview_every=0, not_learning_steps=0, template=TEMPLATE, seed=5,
            run_name="bench",
        ))
        started = time.perf_counter()
        train(config, model, data, Job(id="b", kind="train", title="bench"))
        seconds = time.perf_counter() - started
        rates = {0: concept_rate(model, reader, init)}
        for path in sorted((data.runs / "bench" / "snapshots").glob("*.safetensors")):
            emb = load_embedding(path)
            emb.name = "planted"
            rates[emb.step] = concept_rate(model, reader, emb)
        reached = next((s for s, r in sorted(rates.items()) if s > 0 and r >= THRESHOLD), None)
        return {
            "kind": kind, "lr": lr, "rates": rates, "reached": reached,
            "seconds": None if reached is None else seconds * reached / steps, "train_seconds": seconds,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--lr", nargs="+", default=["0.02"])
    p.add_argument("--vectors", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--kinds", nargs="+", default=["standard", "per-layer"])
    p.add_argument("--grouping", default="block", help="layer groups of the per-layer rows (block, layer, stage)")
    args = p.parse_args()
    from models.toy.planted import SEEDS, THRESHOLD

    rows = [run(kind, lr, args.steps, args.every, args.vectors, args.batch, args.grouping)
            for lr in args.lr for kind in args.kinds]
    print(f"\nplanted concept on toy: {args.vectors} vectors, batch {args.batch}, {len(SEEDS)} seeds per score, "
          f"threshold {THRESHOLD:.0%}")
    print(f"{'kind':<11}{'lr':>7}{'init':>7}{f'steps to {THRESHOLD:.0%}':>14}{'seconds':>9}{'final':>7}{'s/step':>8}")
    for r in rows:
        steps = "not reached" if r["reached"] is None else str(r["reached"])
        secs = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
        final = r["rates"][max(r["rates"])]
        print(f"{r['kind']:<11}{r['lr']:>7}{r['rates'][0]:>7.0%}{steps:>14}{secs:>9}{final:>7.0%}"
              f"{r['train_seconds'] / args.steps:>8.2f}")
    for r in rows:
        curve = ", ".join(f"{s}:{v:.0%}" for s, v in sorted(r["rates"].items()))
        print(f"  {r['kind']} lr {r['lr']}: {curve}")


if __name__ == "__main__":
    main()
