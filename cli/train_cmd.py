"""`python app.py train`: headless training with the same TrainConfig, job and events as the UI.

    python app.py train --config run.toml
    python app.py train --embedding mycat --dataset data/datasets/cat --lr 0.005 --steps 2000
    python app.py train --resume data/runs/mycat-20250101-120000 [--steps 4000]
    accelerate launch --num_processes 2 app.py train --config run.toml     (data parallel)

Flags override the config file; `--set key=value` reaches any TrainConfig field. Progress is a
tqdm bar plus plain log lines from the job's events. Ctrl-C asks the run to stop after the
current step; it saves a resumable snapshot and prints the command to resume.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from cli import CliError
from cli.common import data_dir

# flag -> TrainConfig field, for the common settings (everything else: --set key=value)
FLAGS: dict[str, tuple[str, type]] = {
    "--embedding": ("embedding", str),
    "--dataset": ("dataset", str),
    "--model": ("model", str),
    "--run-name": ("run_name", str),
    "--lr": ("lr", str),
    "--lr-kind": ("lr_kind", str),
    "--steps": ("max_steps", int),
    "--more-steps": ("more_steps", int),
    "--batch-size": ("batch_size", int),
    "--grad-accum": ("grad_accum", int),
    "--resolution": ("resolution", int),
    "--template": ("template", str),
    "--save-every": ("save_every", int),
    "--preview-every": ("preview_every", int),
    "--eval-every": ("eval_every", int),
    "--seed": ("seed", int),
    "--mixed-precision": ("mixed_precision", str),
    "--latent-sampling": ("latent_sampling", str),
}


def register(sub) -> None:
    p = sub.add_parser("train", help="train an embedding (headless; same settings as the UI)")
    p.add_argument("--config", help="a TOML or JSON file of TrainConfig settings")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its resume bundle")
    from training.config_text import FIELD_TEXT

    for flag, (key, typ) in FLAGS.items():
        label, info = FIELD_TEXT.get(key, (key.replace("_", " "), None))
        p.add_argument(flag, dest=key, type=typ, default=None, help=f"{label} ({info})" if info else label)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other setting, e.g. --set flip_p=0.5 (values read as JSON when they parse)")
    p.add_argument("--list", action="store_true", help="list the run folders and exit")
    p.add_argument("--no-bar", action="store_true", help="plain log lines only")
    p.set_defaults(func=run)


def build_config(args) -> Any:
    """TrainConfig from --config, then flags, then --set (later wins). Errors name the key."""
    from training.config import ConfigError, TrainConfig

    values: dict[str, Any] = TrainConfig.load(args.config).to_dict() if args.config else {}
    values.update(_overrides(args))
    try:
        return TrainConfig.from_dict(values)
    except ConfigError as e:
        raise CliError(str(e)) from None


def _overrides(args) -> dict[str, Any]:
    out = {key: getattr(args, key) for key, _ in FLAGS.values() if getattr(args, key, None) is not None}
    for item in args.set:
        if "=" not in item:
            raise CliError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out[key.strip()] = value
    return out


def run(args) -> int:
    from training.distributed import DistContext

    dd = data_dir(args)
    if args.list:
        from training.service import runs

        for info in runs(dd):
            print(f"{info['name']}: step {info['last_step']}, loss {info['last_loss']}"
                  f"{' (resumable)' if info['resumable'] else ''}  {info['path']}")
        return 0
    dist = DistContext.from_env()
    if dist.world > 1:
        return _run_distributed(args, dd, dist)
    from jobs.registry import JobRegistry
    from training.service import resume_training, start_training

    registry = JobRegistry()
    if args.resume:
        job = resume_training(registry, args.resume, dd, **_overrides(args))
    else:
        job = start_training(registry, build_config(args), dd)
    return follow(job, bar=not args.no_bar)


def follow(job, bar: bool = True) -> int:
    """Print a job's events until it ends; Ctrl-C requests a clean stop (twice: leave now)."""
    from tqdm import tqdm

    from jobs.registry import JobState

    progress = None
    cursor = 0
    stopping = False
    out = tqdm.write if bar else print
    while True:
        try:
            events, cursor = job.wait_events(cursor, timeout=0.5)
        except KeyboardInterrupt:
            if stopping:
                print("interrupted again: leaving without waiting for the save", file=sys.stderr)
                return 130
            stopping = True
            out("stopping after the current step and saving a resumable snapshot (Ctrl-C again to leave now)")
            job.request_stop()
            continue
        for ev in events:
            d = ev.data
            if ev.kind == "progress" and d.get("phase") is None:
                if bar and progress is None:
                    progress = tqdm(total=d["total"], unit="step", dynamic_ncols=True)
                if progress is not None:
                    progress.n = d["done"]
                    progress.set_postfix_str(f"step {d.get('step')} epoch {d.get('epoch')}", refresh=False)
                    progress.refresh()
            elif ev.kind == "loss" and not bar and d["step"] % 10 == 0:
                out(f"step {d['step']}: loss {d['loss']:.4f} (smoothed {d['smoothed']:.4f}) lr {d['lr']:g}")
            elif ev.kind == "loss" and progress is not None:
                progress.set_postfix_str(f"loss {d['smoothed']:.4f} lr {d['lr']:g}", refresh=False)
            elif ev.kind in ("message", "warning"):
                out(("warning: " if ev.kind == "warning" else "") + d["text"])
            elif ev.kind == "eval":
                out(f"step {d['step']}: eval loss {d['loss']:.5f}")
            elif ev.kind == "preview":
                out(f"preview: {d['path']}")
            elif ev.kind == "error":
                out(f"error: {d['text']}")
        if job.state.done and not events:
            break
    if progress is not None:
        progress.close()
    result = job.result or {}
    if job.state == JobState.FAILED:
        return 1
    if result.get("run_dir"):
        print(f"run folder: {result['run_dir']}")
    if job.state == JobState.INTERRUPTED:
        if result.get("run_dir"):
            print(f"resume with: python app.py train --resume {result['run_dir']}")
        return 130
    return 0


def _run_distributed(args, dd, dist) -> int:
    """Every process runs the loop; the main one creates the run folder and prints."""
    from pathlib import Path

    import torch.distributed as tdist

    from jobs.registry import Job, run_job
    from models.cache import get_model
    from training.config import TrainConfig
    from training.run_folder import RunFolder
    from training.trainer import train

    try:
        if args.resume:
            run_folder = RunFolder(Path(args.resume))
            config = TrainConfig.load(run_folder.settings_path).replace(**_overrides(args))
        else:
            config = build_config(args)
            holder = [None]
            if dist.is_main:
                folder = RunFolder.create(dd.runs, Path(config.embedding).stem, config.run_name)
                config.save(folder.settings_path)
                holder = [str(folder.path)]
            tdist.broadcast_object_list(holder, src=0)
            run_folder = RunFolder(Path(holder[0]))
        model = get_model(config.model, dd)
        job = Job(id=f"train-rank{dist.rank}", kind="train", title="train",
                  log_path=run_folder.events_path if dist.is_main else None)
        job.fn = lambda j: train(config, model, dd, j, run=run_folder, resume=bool(args.resume), dist=dist)
        if dist.is_main:
            import threading

            worker = threading.Thread(target=run_job, args=(job,), daemon=True)
            worker.start()
            code = follow(job, bar=not args.no_bar)
            worker.join()
        else:
            run_job(job)
            code = 0 if job.error is None else 1
        dist.barrier()
        return code
    finally:
        dist.close()
