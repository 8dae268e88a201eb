"""Training speed and memory: our trainer beside the floor, on the tiny model and an SD 1.5-shaped one.

    python benchmarks/bench_train.py [--steps 20] [--resolution 512] [--batch 1] [--only sd15]

The floor is what any TI trainer must compute per step: one text-encoder forward+backward
(to its input embeddings) and one UNet forward+backward (to the conditioning) on the same
batch. The ratio (our step time / floor) says how much our loop adds (prompt building, the
splice hook, logging, health checks). Weights are random: speed does not depend on them.
Defaults: 512 px on a GPU, 128 px on a CPU. A script that prints a table, never a test.

Memory: each measurement (ours, floor) runs in a fresh subprocess so one cannot inherit the
other's peak. On CUDA the MiB columns are torch.cuda.max_memory_allocated during the measurement.
On CPU they are the process's peak resident set size during the measurement minus its RSS just
before it (the model loaded and in place): what training adds on top of holding the model. The
peak is reset first through /proc/self/clear_refs; where that is refused, ru_maxrss (peak since
the process started, model loading included) is used and the header says so. "RSS MiB" is the
whole process's peak, model and Python included.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def sd15_model(data_dir):
    """SD 1.5 shapes (860M UNet, CLIP ViT-L/14 text tower, SD VAE), random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from embeddings.families import CLIP_L
    from models.base import BaseModel
    from models.load import load_base_model

    tiny = load_base_model("tiny", data_dir)  # for its CLIP tokenizer
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                      num_hidden_layers=12, max_position_embeddings=77, projection_dim=768,
                                      hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                      pad_token_id=49407))
    unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8, sample_size=64)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
    return BaseModel(name="sd15-random", source="builtin", location="-", family="sd1", encoder_keys=(CLIP_L,),
                     tokenizers=tiny.tokenizers, text_encoders=[te], unet=unet, vae=vae, scheduler=sched,
                     short_hash="random", random_weights=True).freeze()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_step_time(model, plan, resolution: int, batch: int, steps: int) -> float:
    """Seconds per (text encoder fwd+bwd + UNet fwd+bwd) with nothing else around it."""
    from diffusers import DDPMScheduler

    from training.loss import denoise_loss

    te, tok = model.text_encoders[0], model.tokenizers[0]
    ids = tok(["a photo of a flat colour"] * batch, padding="max_length", max_length=77,
              return_tensors="pt").input_ids.to(plan.device)
    lat = torch.randn(batch, 4, resolution // 8, resolution // 8, device=plan.device)
    sched = DDPMScheduler.from_config(model.scheduler.config)
    holder = {}

    def leaf(_m, _i, out):  # gradient stops at the token embeddings, as for spliced vectors
        holder["x"] = out.detach().requires_grad_(True)
        return holder["x"]

    handle = te.get_input_embeddings().register_forward_hook(leaf)

    class Cond:
        pooled = None

    try:
        times = []
        for i in range(steps + 2):
            _sync(plan.device)
            t0 = time.perf_counter()
            with plan.autocast():
                cond = Cond()
                cond.hidden = te(ids, return_dict=True).last_hidden_state
                noise = torch.randn_like(lat)
                ts = torch.randint(0, 1000, (batch,), device=plan.device)
                loss = denoise_loss(model, sched, lat, noise, ts, cond)
            loss.backward()
            _sync(plan.device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    finally:
        handle.remove()
    return sorted(times)[len(times) // 2]


def trainer_step_time(model, data, plan, resolution: int, batch: int, steps: int) -> float:
    from train_fixtures import make_dataset

    from embeddings.create import create_embedding
    from embeddings.formats import save_embedding
    from jobs.registry import Job
    from training.config import TrainConfig
    from training.trainer import train

    emb = create_embedding(model, "flatcol", "colour", 2)
    save_embedding(emb, data.embeddings / "flatcol.safetensors")
    ds = make_dataset(Path(tempfile.mkdtemp()) / "ds", n=max(4, batch), size=resolution)
    cfg = TrainConfig(embedding="flatcol", dataset=str(ds), model=model.name, resolution=resolution,
                      bucket_step=8, min_bucket=8, max_bucket=4096, lr="0.005", max_steps=steps + 2,
                      batch_size=batch, save_every=0, preview_every=0, not_learning_steps=0, template="subject")
    job = Job(id="bench", kind="train", title="bench")
    train(cfg, model, data, job, plan=plan)
    stamps = [e.time for e in job.events("loss")][2:]  # skip warm-up steps
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:], strict=False))
    return gaps[len(gaps) // 2]


def _status_kib(field: str) -> int | None:
    """A `Vm...` line of /proc/self/status in KiB (Linux), or None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the peak covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_kib() -> int:
    hwm = _status_kib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def worker(which: str, what: str, args) -> dict:
    """One measurement in this (fresh) process; returns seconds per step and memory."""
    from models.load import load_base_model
    from training.device import choose_device
    from workspace.datadir import DataDir

    plan = choose_device(args.precision)
    data = DataDir.at(args.data_dir).ensure()
    model = load_base_model("tiny", data) if which == "tiny" else sd15_model(data)
    res = args.resolution or (64 if which == "tiny" else (512 if plan.device.type == "cuda" else 128))
    for m in (*model.text_encoders, model.unet):
        m.to(device=plan.device, dtype=plan.weight_dtype)
    cuda = plan.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded_kib = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    if what == "ours":
        step_s = trainer_step_time(model, data, plan, res, args.batch, args.steps)
    else:
        step_s = floor_step_time(model, plan, res, args.batch, args.steps)
    peak_kib = _peak_rss_kib()
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else max(0, peak_kib - loaded_kib) / 1024
    return {"res": res, "device": plan.label, "step_s": step_s, "mem_mib": mem, "rss_mib": peak_kib / 1024,
            "mem_kind": "cuda" if cuda else ("rss-added" if reset else "ru_maxrss-added")}


def measure(which: str, what: str, args, data_dir: str) -> dict:
    """Run `worker` in a fresh Python process and read its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, what, "--data-dir", data_dir,
           "--steps", str(args.steps), "--resolution", str(args.resolution), "--batch", str(args.batch),
           "--precision", args.precision]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{which}/{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", choices=["tiny", "sd15"], default=None)
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "WHAT"), help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    data_dir = tempfile.mkdtemp(prefix="bench-train-")  # shared by the workers: tiny is built once
    rows = []
    for which in ("tiny", "sd15"):
        if args.only and which != args.only:
            continue
        floor = measure(which, "floor", args, data_dir)
        ours = measure(which, "ours", args, data_dir)
        rows.append((which, ours, floor))
    kinds = {r[1]["mem_kind"] for r in rows} | {r[2]["mem_kind"] for r in rows}
    meaning = {"cuda": "torch.cuda.max_memory_allocated",
               "rss-added": "peak RSS during the run minus RSS with the model loaded",
               "ru_maxrss-added": "ru_maxrss (since process start) minus RSS with the model loaded"}
    print("MiB: " + "; ".join(meaning[k] for k in sorted(kinds)) + ". RSS MiB: the process's peak RSS.")
    print(f"{'model':6} {'res':>5} {'batch':>5} {'device':22} {'ours it/s':>10} {'ours MiB':>9} {'ours RSS':>9} "
          f"{'floor it/s':>10} {'floor MiB':>9} {'floor RSS':>9} {'ratio':>6}")
    for which, o, f in rows:
        print(f"{which:6} {o['res']:5d} {args.batch:5d} {o['device']:22} {1 / o['step_s']:10.2f} "
              f"{o['mem_mib']:9.0f} {o['rss_mib']:9.0f} {1 / f['step_s']:10.2f} {f['mem_mib']:9.0f} "
              f"{f['rss_mib']:9.0f} {o['step_s'] / f['step_s']:6.2f}")


if __name__ == "__main__":
    main()
