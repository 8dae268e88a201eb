"""CLIP scores: seconds per evaluated snapshot, fresh and from the cache.

    python benchmarks/bench_scores.py [--only tiny sd15] [--size 0] [--sample-steps 0] [--snapshots 3]

A run folder is made by hand (an embedding, `--snapshots` perturbed snapshots, four training
images, settings asking for 1 likeness prompt and 2 edit prompts × `--seeds` seeds) and scored
with `training.scores.evaluate_run` twice: the first pass generates every image, the second reads
the cache. The CLIP is a random-weight open_clip ViT-B-32 (the usual size; its numbers mean
nothing, its cost is real), or with `--clip toy` the toy world's small one. The SD 1.5-shaped model is the bundled config with random weights
(benchmarks/bench_train.py builds it once); on a CPU it runs at 128 px with 4 sampling steps, on a
GPU at 512 px with 20 steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import default_weights_dir, load_model  # noqa: E402

from embeddings.create import create_embedding  # noqa: E402
from embeddings.formats import save_embedding  # noqa: E402
from models.clip import clip_folder, save_clip_folder  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.outputs import snapshot_name  # noqa: E402
from training.run_folder import RunFolder  # noqa: E402
from training.scores import evaluate_run  # noqa: E402
from workspace.datadir import DataDir  # noqa: E402


def make_clip(data: DataDir, size: str) -> None:
    """A random-weight CLIP: "vit-b-32" (the usual size) or "toy" (the toy world's small config)."""
    import open_clip

    torch.manual_seed(0)
    if size == "toy":
        cfg = json.loads((ROOT / "models" / "toy" / "toy-clip.json").read_text())
        model = open_clip.model.CLIP(**cfg)
    else:
        model = open_clip.create_model("ViT-B-32")
        cfg = open_clip.get_model_config("ViT-B-32")
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3} if size == "toy" else {}
    save_clip_folder(model, cfg, clip_folder(data) / f"{size}-random", **norm)


def make_run(data: DataDir, model, model_spec: str, size: int, sample_steps: int, seeds: int, snapshots: int) -> RunFolder:
    from PIL import Image

    dataset = data.datasets / "solid"
    dataset.mkdir(parents=True, exist_ok=True)
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (40, 60, 220), (230, 220, 40)]):
        Image.new("RGB", (size, size), colour).save(dataset / f"{i}.png")
    emb = create_embedding(model, "benchcat", "cat", 2)
    config = TrainConfig(embedding="benchcat", dataset="solid", model=model_spec, resolution=size,
                         score_prompts=["a photo of [name]"], edit_prompts=["a painting of [name]", "[name] on the beach"],
                         score_seeds=list(range(seeds)), score_steps=sample_steps, preview_cfg=7.0)
    run = RunFolder.create(data.runs, "benchcat")
    config.save(run.settings_path)
    save_embedding(emb, run.original / "benchcat.safetensors")
    gen = torch.Generator().manual_seed(1)
    for k in range(1, snapshots + 1):
        step = 100 * k
        vectors = {key: v + 0.01 * k * torch.randn(v.shape, generator=gen) for key, v in emb.vectors.items()}
        snap = emb.copy(name=snapshot_name(emb.name, step), vectors=vectors, step=step)
        save_embedding(snap, run.snapshots / f"{snap.name}.safetensors")
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="+", choices=["tiny", "sd15"], default=["tiny", "sd15"])
    ap.add_argument("--size", type=int, default=0, help="0: 64 for tiny, 512 on a GPU, 128 on a CPU")
    ap.add_argument("--sample-steps", type=int, default=0, help="0: 20 on a GPU, 4 on a CPU")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--snapshots", type=int, default=3)
    ap.add_argument("--clip", choices=["vit-b-32", "toy"], default="vit-b-32", help="the random CLIP's size")
    ap.add_argument("--weights-dir", default=str(default_weights_dir()))
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()
    gpu = torch.cuda.is_available()
    rows = []
    print(f"{'model':<6} {'device':<6} {'size':>5} {'steps':>5} {'images':>6} {'s/snapshot':>11} {'cached s/snapshot':>18}")
    for which in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            data = DataDir.at(tmp).ensure()
            model = load_model(which, data, Path(args.weights_dir))
            spec = "tiny" if which == "tiny" else model.location
            size = args.size or (64 if which == "tiny" else 512 if gpu else 128)
            steps = args.sample_steps or (20 if gpu else 4)
            make_clip(data, args.clip)
            run = make_run(data, model, spec, size, steps, args.seeds, args.snapshots)
            evaluate_run(run, data, model=model, overrides={"score_seeds": [99]})  # warm-up (CLIP load, kernels)
            n = args.snapshots + 1  # the untrained embedding is scored too
            t0 = time.perf_counter()
            rs = evaluate_run(run, data, model=model)
            fresh = (time.perf_counter() - t0) / n
            t0 = time.perf_counter()
            evaluate_run(run, data, model=model)
            cached = (time.perf_counter() - t0) / n
            images = (1 + 2) * args.seeds
            device = "cuda" if gpu else "cpu"
            print(f"{which:<6} {device:<6} {size:>5} {steps:>5} {images:>6} {fresh:>11.2f} {cached:>18.3f}")
            rows.append({"model": which, "device": device, "size": size, "sample_steps": steps, "images": images,
                         "seconds_per_snapshot": fresh, "cached_seconds_per_snapshot": cached,
                         "suggestion": rs.suggestion.words})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
