"""Training speed and memory: our trainer beside the floor, on the tiny model and SD 1.5- and SDXL-shaped ones.

    python benchmarks/bench_train.py [--steps 10] [--resolution 512] [--batch 1] [--only sd15 sdxl]
                                     [--checkpointing off|on|both] [--precision fp16]

The floor is what any TI trainer must compute per step: the text-encoder forward+backward (to its
input embeddings; both encoders for SDXL) and one UNet forward+backward (to the conditioning) on
the same batch. The ratio (our step time / floor) says how much our loop adds (prompt building,
the splice hook, logging, health checks). Weights are random: speed does not depend on them.
Defaults: 512 px (SDXL: 1024) on a GPU, 128 px on a CPU. A script that prints a table, never a test.

The SD 1.5- and SDXL-shaped models are built from the bundled configs (models/configs) with random
weights once, saved as diffusers folders in fp16 under --weights-dir (default
~/.cache/ti-studio-bench), and loaded from there by every measurement through the ordinary folder
loader: no download, and the second run starts at once.

Memory: each measurement (ours, floor) runs in a fresh subprocess so one cannot inherit the
other's peak. On CUDA the MiB columns are torch.cuda.max_memory_allocated during the measurement,
weights included (ours also includes the latent caching with the VAE on the GPU); "est MiB" is
training.memory's pre-flight estimate of the run's peak for the same settings (compare with ours)
and "calib" the CALIBRATION["scale"] value that would make its training-step part match the
floor's peak, which is one step alone (write it into training/memory.py).
On CPU they are the process's peak resident set size during the measurement minus its RSS just
before it (the model loaded and in place): what training adds on top of holding the model. The
peak is reset first through /proc/self/clear_refs; where that is refused, ru_maxrss (peak since
the process started, model loading included) is used and the header says so. "RSS MiB" is the
whole process's peak, model and Python included.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}  # which bundled config each random model is built from
WEIGHTS_VERSION = 1  # bump when the way the random folders are built changes


def default_weights_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ti-studio-bench"


def random_model_folder(which: str, weights_dir: Path) -> Path:
    """A diffusers folder with the bundled config of `which` and random fp16 weights, built once.

    Built on the GPU when there is one (random init of 3.5 B parameters takes a minute on a CPU,
    a second on a GPU), written to a staging folder and renamed into place, so an interrupted
    build is never mistaken for a finished one."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from embeddings.families import FAMILIES
    from models.single_file import bundled_config_dir
    from models.tokenizer import write_clip_tokenizer
    from workspace.atomic import build_folder_once

    family = FAMILY[which]
    cfg = bundled_config_dir(family)
    device = "cuda" if torch.cuda.is_available() else "cpu"

    def build(staging: Path) -> None:
        t0 = time.time()
        builders = {
            "unet": lambda: UNet2DConditionModel.from_config(json.loads((cfg / "unet" / "config.json").read_text())),
            "vae": lambda: AutoencoderKL.from_config(json.loads((cfg / "vae" / "config.json").read_text())),
            "text_encoder": lambda: CLIPTextModel(CLIPTextConfig.from_pretrained(cfg / "text_encoder")),
        }
        if (cfg / "text_encoder_2").is_dir():
            builders["text_encoder_2"] = lambda: CLIPTextModelWithProjection(
                CLIPTextConfig.from_pretrained(cfg / "text_encoder_2"))
        for k, (name, make) in enumerate(builders.items()):  # one at a time: the SDXL UNet alone is 10 GB in fp32
            torch.manual_seed(k)
            with torch.device(device):
                module = make()
            module.to(torch.float16).save_pretrained(staging / name, safe_serialization=True)
            del module
        shutil.copytree(cfg / "scheduler", staging / "scheduler")
        shutil.copy2(cfg / "model_index.json", staging / "model_index.json")
        for k, pad in enumerate(FAMILIES[family].pad_tokens):
            write_clip_tokenizer(staging / ("tokenizer" if k == 0 else f"tokenizer_{k + 1}"), pad_token=pad)
        print(f"built {which} random weights in {time.time() - t0:.0f}s", file=sys.stderr)

    return build_folder_once(weights_dir / f"{which}-random", "bench_weights.json",
                             {"version": WEIGHTS_VERSION, "note": "random"}, build)


def load_model(which: str, data_dir, weights_dir: Path):
    from models.load import load_base_model

    if which == "tiny":
        return load_base_model("tiny", data_dir)
    model = load_base_model(str(random_model_folder(which, weights_dir)), data_dir)
    model.random_weights = True
    return model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def floor_step_time(model, plan, resolution: int, batch: int, steps: int, checkpointing: bool = False) -> float:
    """Seconds per (text encoder(s) fwd+bwd + UNet fwd+bwd) with nothing else around it; with
    `checkpointing`, switched on in the modules as the trainer does."""
    from diffusers import DDPMScheduler

    from training.loss import denoise_loss, sdxl_time_ids

    xl = model.family == "sdxl"
    ids = [tok(["a photo of a flat colour"] * batch, padding="max_length", max_length=77,
               return_tensors="pt").input_ids.to(plan.device) for tok in model.tokenizers]
    lat = torch.randn(batch, 4, resolution // 8, resolution // 8, device=plan.device)
    time_ids = sdxl_time_ids([(resolution, resolution)] * batch, lat.shape[-2:], 8, plan.device) if xl else None
    sched = DDPMScheduler.from_config(model.scheduler.config)

    def leaf(_m, _i, out):  # gradient stops at the token embeddings, as for spliced vectors
        return out.detach().requires_grad_(True)

    handles = [te.get_input_embeddings().register_forward_hook(leaf) for te in model.text_encoders]
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        for te in model.text_encoders:
            te.gradient_checkpointing_enable()
            te.train()

    class Cond:
        pooled = None

    try:
        times = []
        for i in range(steps + 2):
            _sync(plan.device)
            t0 = time.perf_counter()
            with plan.autocast():
                cond = Cond()
                if xl:  # both encoders' penultimate layer, concatenated; the second one's pooled output
                    outs = [te(x, output_hidden_states=True, return_dict=True)
                            for te, x in zip(model.text_encoders, ids, strict=True)]
                    cond.hidden = torch.cat([o.hidden_states[-2] for o in outs], dim=-1)
                    cond.pooled = outs[1].text_embeds
                else:
                    cond.hidden = model.text_encoders[0](ids[0], return_dict=True).last_hidden_state
                noise = torch.randn_like(lat)
                ts = torch.randint(0, 1000, (batch,), device=plan.device)
                loss = denoise_loss(model, sched, lat, noise, ts, cond, time_ids=time_ids)
            loss.backward()
            _sync(plan.device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    finally:
        for h in handles:
            h.remove()
    return sorted(times)[len(times) // 2]


def trainer_step_time(model, data, plan, resolution: int, batch: int, steps: int, checkpointing: bool = False) -> float:
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
                      batch_size=batch, save_every=0, preview_every=0, not_learning_steps=0, template="subject",
                      gradient_checkpointing=checkpointing)
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


def default_resolution(which: str, cuda: bool) -> int:
    if which == "tiny":
        return 64
    if not cuda:
        return 128
    return 1024 if which == "sdxl" else 512


def worker(which: str, what: str, args) -> dict:
    """One measurement in this (fresh) process; returns seconds per step and memory."""
    from training.device import choose_device
    from training.memory import MemorySettings, calibration_factor, estimate_memory
    from workspace.datadir import DataDir

    plan = choose_device(args.precision)
    data = DataDir.at(args.data_dir).ensure()
    model = load_model(which, data, Path(args.weights_dir))
    cuda = plan.device.type == "cuda"
    res = args.resolution or default_resolution(which, cuda)
    ckpt = bool(args.ckpt)
    for m in (*model.text_encoders, model.unet):
        m.to(device=plan.device, dtype=plan.weight_dtype)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded_kib = _status_kib("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    if what == "ours":
        step_s = trainer_step_time(model, data, plan, res, args.batch, args.steps, ckpt)
    else:
        step_s = floor_step_time(model, plan, res, args.batch, args.steps, ckpt)
    peak_kib = _peak_rss_kib()
    mem = torch.cuda.max_memory_allocated() / 2**20 if cuda else max(0, peak_kib - loaded_kib) / 1024
    prec = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[plan.weight_dtype]
    settings = MemorySettings(shape={"sd15": "sd1"}.get(which, which), resolution=res, batch_size=args.batch,
                              precision=prec, gradient_checkpointing=ckpt)
    est = estimate_memory(settings)
    # The floor's peak is the training step alone (weights + one step); ours adds the latent caching.
    calib = calibration_factor(int(mem * 2**20), settings) if cuda and what == "floor" else None
    return {"res": res, "ckpt": ckpt, "device": plan.label, "step_s": step_s, "mem_mib": mem,
            "rss_mib": peak_kib / 1024, "mem_kind": "cuda" if cuda else ("rss-added" if reset else "ru_maxrss-added"),
            "est_mib": est.peak / 2**20, "est_step_mib": est.phases["training step"] / 2**20, "calib": calib,
            "gpu": torch.cuda.get_device_name() if cuda else ""}


def measure(which: str, what: str, ckpt: bool, args, data_dir: str) -> dict:
    """Run `worker` in a fresh Python process and read its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", which, what, "--data-dir", data_dir,
           "--steps", str(args.steps), "--resolution", str(args.resolution), "--batch", str(args.batch),
           "--precision", args.precision, "--weights-dir", args.weights_dir] + (["--ckpt"] if ckpt else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{which}/{what} (checkpointing {'on' if ckpt else 'off'}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--resolution", type=int, default=0, help="0: 64 for tiny, 512 (SDXL 1024) on a GPU, 128 on a CPU")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--only", nargs="+", choices=["tiny", "sd15", "sdxl"], default=None,
                    help="models to measure (default: tiny sd15)")
    ap.add_argument("--checkpointing", choices=["off", "on", "both"], default="off")
    ap.add_argument("--weights-dir", default=str(default_weights_dir()),
                    help="where the random SD 1.5 / SDXL folders are built once and kept")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file (gpu_check.sh reads it)")
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "WHAT"), help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args)))
        return
    data_dir = tempfile.mkdtemp(prefix="bench-train-")  # shared by the workers: tiny is built once
    ckpts = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = []
    for which in args.only or ["tiny", "sd15"]:
        if which != "tiny":
            random_model_folder(which, Path(args.weights_dir))  # built once, before any timing
        for ckpt in ckpts:
            floor = measure(which, "floor", ckpt, args, data_dir)
            ours = measure(which, "ours", ckpt, args, data_dir)
            rows.append((which, ours, floor))
    print_table(rows, args.batch)
    if args.json:
        Path(args.json).write_text(json.dumps([{"model": w, "ours": o, "floor": f} for w, o, f in rows], indent=1))


def print_table(rows, batch: int) -> None:
    kinds = {r[1]["mem_kind"] for r in rows} | {r[2]["mem_kind"] for r in rows}
    meaning = {"cuda": "torch.cuda.max_memory_allocated (weights included)",
               "rss-added": "peak RSS during the run minus RSS with the model loaded",
               "ru_maxrss-added": "ru_maxrss (since process start) minus RSS with the model loaded"}
    gpus = sorted({r[1]["gpu"] for r in rows if r[1]["gpu"]})
    print("MiB: " + "; ".join(meaning[k] for k in sorted(kinds)) + ". RSS MiB: the process's peak RSS."
          + (f" GPU: {', '.join(gpus)}." if gpus else ""))
    print(f"{'model':6} {'res':>5} {'batch':>5} {'ckpt':>4} {'device':22} {'ours it/s':>10} {'ours MiB':>9} "
          f"{'est MiB':>8} {'calib':>6} {'ours RSS':>9} {'floor it/s':>10} {'floor MiB':>9} {'floor RSS':>9} "
          f"{'ratio':>6}")
    for which, o, f in rows:
        calib = f"{f['calib']:6.3f}" if f.get("calib") is not None else f"{'-':>6}"
        print(f"{which:6} {o['res']:5d} {batch:5d} {'on' if o['ckpt'] else 'off':>4} {o['device']:22} "
              f"{1 / o['step_s']:10.2f} {o['mem_mib']:9.0f} {o['est_mib']:8.0f} {calib} {o['rss_mib']:9.0f} "
              f"{1 / f['step_s']:10.2f} {f['mem_mib']:9.0f} {f['rss_mib']:9.0f} {o['step_s'] / f['step_s']:6.2f}")


if __name__ == "__main__":
    main()
