"""`python app.py train`: headless training with the same TrainConfig, job and events as the UI.

    python app.py train --config run.toml
    python app.py train --embedding mycat --dataset data/datasets/cat --lr 0.005 --steps 2000
    python app.py train --resume data/runs/mycat-20250101-120000 [--steps 4000]
    accelerate launch --num_processes 2 app.py train --config run.toml     (data parallel)

Flags override the config file; `--set key=value` reaches any TrainConfig field. Progress is a
tqdm bar plus plain log lines from the job's events. Ctrl-C asks the run to stop after the
current step; it saves a resumable snapshot and prints the command to resume.

`app.py` imports every command module to build its parser, so torch, diffusers and the training
modules are imported inside the functions that run a command, never at module level.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from cli import CliError
from cli.common import data_dir
from jobs.view import JobView, fold

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
        print_memory_estimate(_resumed_config(args), dd)
        job = resume_training(registry, args.resume, dd, **_overrides(args))
    else:
        config = build_config(args)
        print_memory_estimate(config, dd)
        job = start_training(registry, config, dd)
    return follow(job, bar=not args.no_bar)


def print_memory_estimate(config, dd) -> None:
    """The pre-flight GPU memory line (training.memory), printed before the model loads."""
    from training.memory import preflight_text

    if config is not None:
        print(f"memory: {preflight_text(config, dd.models)}", flush=True)


def _resumed_config(args):
    """The settings a resume will use, for the memory line only (None when unreadable: the resume
    itself then says why)."""
    from training.config import ConfigError, TrainConfig
    from training.run_folder import RunFolder

    try:
        config = TrainConfig.load(RunFolder(Path(args.resume)).settings_path)
        overrides = _overrides(args)
        return config.replace(**overrides) if overrides else config
    except (OSError, ConfigError, TypeError, ValueError):
        return None


def follow(job, bar: bool = True) -> int:
    """Print a job's events until it ends; Ctrl-C requests a clean stop (twice: leave now).

    The events are folded into the job's view one at a time (so lines keep the log's order) and
    the printer shows what each one added: the same view the Train tab draws."""
    view = JobView(title=job.title)
    printer = ViewPrinter(bar)
    cursor = 0
    stopping = False
    while True:
        try:
            new, cursor = job.wait_events(cursor, timeout=0.5)
        except KeyboardInterrupt:
            if stopping:
                print("interrupted again: leaving without waiting for the save", file=sys.stderr)
                return 130
            stopping = True
            printer.out("stopping after the current step and saving a resumable snapshot (Ctrl-C again to leave now)")
            job.request_stop()
            continue
        for event in new:
            printer.show(fold(view, (event,)))
        if job.state.done and not new:
            break
    printer.close()
    result = view.result if isinstance(view.result, dict) else {}
    if view.state == "failed":
        return 1
    if result.get("run_dir"):
        print(f"run folder: {result['run_dir']}")
    if view.state == "interrupted":
        if result.get("run_dir"):
            print(f"resume with: python app.py train --resume {result['run_dir']}")
        return 130
    return 0


class ViewPrinter:
    """Shows a growing job view on a terminal: a tqdm bar over the training steps, and a line per
    message, warning, error, evaluation and preview; without the bar, the loss every 10 steps."""

    def __init__(self, bar: bool = True) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm if bar else None
        self.out = tqdm.write if bar else print
        self.bar = None
        self._progress = None
        self._losses, self._notes, self._evals, self._previews = _Tail(), _Tail(), _Tail(), _Tail()

    def show(self, view: JobView) -> None:
        """Print what was added to `view` since the last call."""
        p = view.progress
        if p is not self._progress:
            self._progress = p
            if p is not None and p.phase is None:  # the training loop (not the latent cache)
                if self._tqdm is not None and self.bar is None:
                    self.bar = self._tqdm(total=p.total, unit="step", dynamic_ncols=True)
                if self.bar is not None:
                    self.bar.n = p.done
                    self.bar.set_postfix_str(f"step {p.step} epoch {p.epoch}", refresh=False)
                    self.bar.refresh()
        for loss in self._losses.new(view.losses):
            if self._tqdm is None and loss.step % 10 == 0:
                self.out(f"step {loss.step}: loss {loss.loss:.4f} (smoothed {loss.smoothed:.4f}) lr {loss.lr:g}")
            elif self.bar is not None:
                self.bar.set_postfix_str(f"loss {loss.smoothed:.4f} lr {loss.lr:g}", refresh=False)
        for note in self._notes.new(view.notes):
            self.out({"warning": "warning: ", "error": "error: "}.get(note.level, "") + note.text)
        for e in self._evals.new(view.evals):
            self.out(f"step {e.step}: eval loss {e.loss:.5f}")
        for preview in self._previews.new(view.previews):
            self.out(f"preview: {preview.path}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Tail:
    """Which items of a view's list were shown: how many, and the last one, to notice a list that
    went back (a step logged again in a resumed run's log replaces the points from it on)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: Any = None

    def new(self, items: list) -> list:
        if self.count and (self.count > len(items) or items[self.count - 1] is not self.last):
            self.count = max(0, len(items) - 1)  # went back: the newest point is the new one
        fresh = items[self.count:]
        self.count, self.last = len(items), (items[-1] if items else None)
        return fresh


def _run_distributed(args, dd, dist) -> int:
    """Run the data-parallel loop, then leave the process without interpreter finalization.

    Gloo keeps C++ worker threads and pending-work objects that can outlive
    `destroy_process_group`; when Python tears the interpreter down under them, a rank now and then
    dies with SIGABRT ("terminate called without an active exception") after a finished run, and
    the launcher reports the whole run as failed. Every file the run wrote is already complete
    (atomic writes), so once the group is closed the process flushes its streams and ends with
    `os._exit`, which skips that teardown."""
    import logging
    import os
    import traceback

    from cli import guarded

    code = 1
    try:
        code = guarded(lambda a: _train_distributed(a, dd, dist), args)
    except BaseException:  # an unexpected error still shows its traceback before the hard exit
        traceback.print_exc()
    finally:
        try:
            dist.close()
        finally:
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)


def _train_distributed(args, dd, dist) -> int:
    """Every process runs the loop; the main one plans the run (creates or resumes the folder, as
    the worker path does) and tells the others, and only it writes the event log and prints."""
    import torch.distributed as tdist

    from jobs.registry import Job, run_job
    from training.config import TrainConfig
    from training.run_folder import RunFolder
    from training.service import RunPlan, execute, plan_resume, plan_start

    holder: list[Any] = [None]
    if dist.is_main:
        try:
            plan = plan_resume(args.resume, dd, **_overrides(args)) if args.resume else plan_start(
                build_config(args), dd)
            holder = [(plan.config.to_dict(), str(plan.run.path), plan.resume)]
        except Exception as e:
            holder = [e]
    tdist.broadcast_object_list(holder, src=0)
    if isinstance(holder[0], Exception):
        raise holder[0]
    values, run_path, resume = holder[0]
    plan = RunPlan(TrainConfig.from_dict(values), RunFolder(Path(run_path)), resume)
    job = Job(id=f"train-rank{dist.rank}", kind="train", title="train",
              log_path=plan.run.events_path if dist.is_main else None)
    job.fn = lambda j: execute(plan, dd, j, dist=dist)
    if dist.is_main:
        worker = threading.Thread(target=run_job, args=(job,), daemon=True)
        worker.start()
        code = follow(job, bar=not args.no_bar)
        worker.join()
    else:
        run_job(job)
        code = 0 if job.error is None else 1
    dist.barrier()
    return code
