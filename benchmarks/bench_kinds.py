"""Training step time and memory of each embedding kind, beside standard TI, through the real trainer.

    python benchmarks/bench_kinds.py [--steps 8] [--resolution 0] [--batch 1] [--only tiny|sd15]
    python benchmarks/bench_kinds.py --floor [--rounds 20] [--only tiny|sd15] [--kinds standard,direct]

Each (model, kind) runs in a fresh subprocess (so no run inherits another's peak memory) with
the same settings; "x std" is the kind's step time over the standard kind's on that model. The
per-layer kind's extra cost is its text-encoder pass over groups x batch rows (one batched
pass) and the longer context the routing processors cut up; the UNet's work is the same. The
direct kind runs the text encoder without gradients (no backward through it), so its step is the
cheaper one (target: below standard). The per-timestep kind adds only the blend of its anchors per
sample (a few small tensor ops); one text-encoder pass serves the batch (target: at most 1.1x).
Models and memory columns as in bench_train.py (random weights from the bundled configs, built
once; 512 px on a GPU, 128 px on CPU for SD 1.5, 1024 px on a GPU for SDXL, 64 px for tiny). A script that prints a table, never a test.

`--floor`: the step alone (prompt encoding with the live tensors, UNet forward, backward), all
kinds in one process, taken in turns for `--rounds` rounds; the fastest round of each kind, wall
and this process's CPU seconds. On a busy shared machine the trainer's wall times swing by whole
factors; the fastest of many interleaved rounds is what the step costs when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import (  # noqa: E402
    _peak_rss_kib,
    _reset_peak_rss,
    _status_kib,
    default_resolution,
    default_weights_dir,
    load_model,
)

KIND_RUNS = {  # label -> (kind, creation options, extra training settings)
    "standard": ("standard", {}, {}),
    "per-layer": ("per-layer", {"grouping": "block"}, {}),
    "per-layer+density": ("per-layer", {"grouping": "block"}, {"density_weight": 0.001}),
    "per-timestep": ("per-timestep", {"anchors": "2"}, {}),
    "direct": ("direct", {}, {}),
    "direct-block": ("direct", {"direct_grouping": "block"}, {}),
}


def step_time(model, data, plan, resolution: int, batch: int, steps: int, label: str) -> float:
    from train_fixtures import make_dataset

    from embeddings.create import create_embedding
    from embeddings.formats import save_embedding
    from embeddings.kinds import get_kind
    from jobs.registry import Job
    from training.config import TrainConfig
    from training.trainer import train

    kind, options, extra = KIND_RUNS[label]
    emb = get_kind(kind).make(create_embedding(model, "flatcol", "colour", 2), model.unet, model=model, **options)
    save_embedding(emb, data.embeddings / "flatcol.safetensors")
    ds = make_dataset(Path(tempfile.mkdtemp()) / "ds", n=max(4, batch), size=resolution)
    cfg = TrainConfig(embedding="flatcol", dataset=str(ds), model=model.name, resolution=resolution,
                      bucket_step=8, min_bucket=8, max_bucket=4096, lr="0.005", max_steps=steps + 2,
                      batch_size=batch, save_every=0, preview_every=0, not_learning_steps=0, template="subject",
                      **extra)
    job = Job(id="bench", kind="train", title="bench")
    train(cfg, model, data, job, plan=plan)
    stamps = [e.time for e in job.events("loss")][2:]  # skip warm-up steps
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return gaps[len(gaps) // 2]


def floor_times(model, plan, labels: list[str], resolution: int, batch: int, rounds: int) -> dict[str, tuple]:
    """{label: (fastest wall s, fastest CPU s)} of encode + UNet forward + backward per kind, in turns."""
    import time

    from diffusers import DDPMScheduler

    from embeddings.create import create_embedding
    from embeddings.kinds import get_kind, install_routing
    from embeddings.prompt import PromptEncoder
    from training.loss import denoise_loss, sdxl_time_ids

    sched = DDPMScheduler.from_config(model.scheduler.config)
    std = create_embedding(model, "flatcol", "colour", 2)
    runs = {}
    for label in labels:
        kind_name, options, _extra = KIND_RUNS[label]
        kind = get_kind(kind_name)
        emb = kind.make(std, model.unet, model=model, **options)
        layout = kind.layout(emb, model.unet)
        runs[label] = (kind, emb, layout, PromptEncoder.for_embeddings(model, [emb], 1, layout))
    lat = torch.randn(batch, 4, resolution // 8, resolution // 8, device=plan.device)
    xl = model.family == "sdxl"
    time_ids = sdxl_time_ids([(resolution, resolution)] * batch, lat.shape[-2:], 8, plan.device) if xl else None
    best = {label: (float("inf"), float("inf")) for label in labels}
    for r in range(rounds + 1):  # the first round warms up
        for label, (kind, emb, layout, enc) in runs.items():
            live = {k: v.to(plan.device).requires_grad_(True) for k, v in kind.trainable(emb).items()}
            routing = install_routing(model.unet, layout)
            try:
                _sync(plan.device)
                w0, c0 = time.perf_counter(), time.process_time()
                if kind.timed:  # the blend is part of the step
                    live = kind.live_at(emb, live, torch.full((batch,), 500))
                with plan.autocast():
                    cond = enc.encode(["a photo of flatcol"] * batch, {"flatcol": live})
                    loss = denoise_loss(model, sched, lat, torch.randn_like(lat), torch.full((batch,), 500,
                                        device=plan.device), cond, time_ids=time_ids)
                loss.backward()
                _sync(plan.device)
                w, c = time.perf_counter() - w0, time.process_time() - c0
            finally:
                if routing is not None:
                    routing.remove()
            if r > 0:
                best[label] = (min(best[label][0], w), min(best[label][1], c))
    return best


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_main(args) -> None:
    from training.device import choose_device
    from workspace.datadir import DataDir

    plan = choose_device(args.precision)
    data = DataDir.at(tempfile.mkdtemp(prefix="bench-kinds-")).ensure()
    labels = args.kinds.split(",")
    print(f"{'model':6} {'res':>5} {'batch':>5} {'kind':18} {'device':22} {'wall s':>8} {'cpu s':>8} {'x std':>6}")
    for which in ("tiny", "sd15", "sdxl"):
        if (args.only and which != args.only) or (not args.only and which == "sdxl"):
            continue
        model = load_model(which, data, Path(args.weights_dir))
        model.freeze()
        for m in (*model.text_encoders, model.unet):
            m.to(device=plan.device, dtype=plan.weight_dtype)
        res = args.resolution or default_resolution(which, plan.device.type == "cuda")
        best = floor_times(model, plan, labels, res, args.batch, args.rounds)
        base = best[labels[0]][0]
        for label in labels:
            w, c = best[label]
            print(f"{which:6} {res:5d} {args.batch:5d} {label:18} {plan.label:22} {w:8.4f} {c:8.4f} {w / base:6.2f}",
                  flush=True)


def worker(which: str, label: str, args) -> dict:
    from training.device import choose_device
    from workspace.datadir import DataDir

    plan = choose_device(args.precision)
    data = DataDir.at(args.data_dir).ensure()
    model = load_model(which, data, Path(args.weights_dir))
    res = args.resolution or default_resolution(which, plan.device.type == "cuda")
    for m in (*model.text_encoders, model.unet):
        m.to(device=plan.device, dtype=plan.weight_dtype)
    cuda = plan.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded_kib = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _reset_peak_rss()
    step_s = step_time(model, data, plan, res, args.batch, args.steps, label)
    peak_kib = _peak_rss_kib()
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else max(0, peak_kib - loaded_kib) / 1024
    return {"res": res, "device": plan.label, "step_s": step_s, "mem_mib": mem}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", choices=["tiny", "sd15", "sdxl"], default=None,
                    help="one model (default: tiny and sd15; sdxl only when named)")
    ap.add_argument("--weights-dir", default=str(default_weights_dir()),
                    help="where bench_train's random SD 1.5 / SDXL folders are built once and kept")
    ap.add_argument("--kinds", default=",".join(KIND_RUNS), help="comma-separated labels of KIND_RUNS")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "KIND"), help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help="the step alone, kinds in turns in one process (see above)")
    ap.add_argument("--rounds", type=int, default=20, help="--floor: rounds (the fastest of each kind is shown)")
    args = ap.parse_args()
    if args.floor:
        floor_main(args)
        return
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    data_dir = tempfile.mkdtemp(prefix="bench-kinds-")
    print(f"{'model':6} {'res':>5} {'batch':>5} {'kind':18} {'device':22} {'s/step':>8} {'it/s':>7} "
          f"{'MiB':>7} {'x std':>6}")
    for which in ("tiny", "sd15", "sdxl"):
        if (args.only and which != args.only) or (not args.only and which == "sdxl"):
            continue
        base = None
        for label in args.kinds.split(","):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, label, "--data-dir", data_dir,
                   "--steps", str(args.steps), "--resolution", str(args.resolution), "--batch", str(args.batch),
                   "--precision", args.precision, "--weights-dir", args.weights_dir]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{which}/{label} failed:\n{done.stderr[-3000:]}")
            r = json.loads(done.stdout.strip().splitlines()[-1])
            base = base or r["step_s"]
            print(f"{which:6} {r['res']:5d} {args.batch:5d} {label:18} {r['device']:22} {r['step_s']:8.3f} "
                  f"{1 / r['step_s']:7.2f} {r['mem_mib']:7.0f} {r['step_s'] / base:6.2f}", flush=True)


if __name__ == "__main__":
    main()
