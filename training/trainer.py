"""The textual-inversion training loop, readable top to bottom.

Only the embedding's vectors learn. The base model is frozen (`requires_grad_(False)`, checked
before the first step), the vectors are spliced into the token-embedding output by
`embeddings.prompt.PromptEncoder` (no full-vocabulary gradient, nothing to restore), latents are
cached once (training.latents), and each optimizer step is: prompts -> text encoder(s) with the
live vectors -> noised latents -> UNet -> MSE on epsilon or v -> backward into the vectors ->
unscale, health check, clip -> AdamW.

`train()` is four named steps:

1. `prepare()`: the embedding and where training starts, the data, the device and frozen model,
   the latent cache, the vectors, optimizer and random generators, the run folder -> a `RunState`
   (or the reason there is nothing to do);
2. `guarded_step()`: one optimizer step over `grad_accum` micro-batches with the health guards
   -> an `Outcome` (stepped, skipped, or stop);
3. `bookkeeping()`: after a step, on the main process: logs, events, evaluation, snapshots, previews;
4. `finish()`: the last snapshot, previews and evaluation, the final files and the library copy.

The run emits the typed events of `jobs.events` (Progress, Loss, Norms, Eval, Preview, Files,
Message, Warning); the Train tab and `app.py train` read them through one fold (`jobs.view`).

A full disk: a snapshot, resume bundle, preview or log row that cannot be written is a warning
naming the file, and training goes on (every write is atomic, so the last good snapshot and bundle
stay as they were, resumable). Only the final save is fatal: if a file in final/ cannot be
written, the job fails naming it and the embeddings folder is left unchanged.

The job's result (also the return value) is a dict: run_dir, embedding (the final file in the
embeddings folder), files {format: path} in the run's final/ folder, step, steps_done, stopped
("finished", "schedule ended", "interrupted", "auto-stopped", "nothing to do"; `reason` says why
for the last two) and fresh_optimizer.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.formats import save_embedding, writable_formats
from embeddings.kinds import get_kind, install_routing, kind_of
from embeddings.library import EmbeddingLibrary
from embeddings.prompt import ALIAS_SEP, GenerationStopped, PromptEncoder
from jobs import events
from jobs.registry import Job
from training.checkpoint import TrainState, capture_rng, load_bundle, restore_rng, rng_for_rank, save_bundle
from training.config import ConfigError, TrainConfig
from training.dataset import EpochSampler, PromptBuilder, check_dataset, load_pixels, scan_dataset
from training.density import DensityPrior
from training.device import DevicePlan, choose_device, place
from training.distributed import DistContext
from training.errors import TrainingError
from training.evaluate import Evaluator, build_evaluator
from training.latents import LatentCache
from training.loss import denoise_loss, sdxl_time_ids
from training.outputs import save_final, save_snapshot, save_to_library, snapshot_name
from training.previews import PreviewSpec, preview_specs, render_preview
from training.run_folder import RunFolder
from training.schedule import Schedule
from training.scores import auto_stop_due, score_live
from training.templates import load_template
from training.vector_shuffle import shuffle_order
from workspace.atomic import SaveError, atomic_write_with, remove_stale_temps
from workspace.datadir import DataDir, DatasetNotFoundError


@dataclass
class TrainResult:
    run_dir: str
    step: int
    steps_done: int
    stopped: str
    embedding: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    fresh_optimizer: bool = True
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class OutcomeKind(StrEnum):
    STEPPED = "stepped"  # the vectors moved; bookkeeping follows
    SKIPPED = "skipped"  # non-finite or an fp16 overflow: nothing moved, try the next batches
    STOP = "stop"  # the schedule ended before the target step


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    loss: float = math.nan
    lr: float = 0.0


@dataclass(frozen=True)
class StepContext:
    """What one micro-batch needs and never changes during the run."""

    model: Any
    encoder: PromptEncoder
    noise_scheduler: DDPMScheduler
    cache: LatentCache
    records: list
    builder: PromptBuilder
    name: str
    config: TrainConfig
    plan: DevicePlan
    generator: torch.Generator
    prompt_rng: random.Random
    end: int
    density: DensityPrior | None = None  # the density regulariser (config.density_weight > 0)
    # A timed kind (per-timestep): the trainable tensors -> each row's vectors at its timestep
    # (`Kind.live_at`); None: the tensors are the conditioning as they are.
    at_timesteps: Callable[[dict[str, torch.Tensor], torch.Tensor], dict[str, torch.Tensor]] | None = None


@dataclass
class RunState:
    """One run from `prepare()` to `finish()`: its fixed parts and the position of the loop.

    Everything the resume bundle stores is here (`bundle()`), so "what an interrupt saves" and
    "what the loop uses" cannot drift apart."""

    config: TrainConfig
    model: Any
    data_dir: DataDir
    job: Job
    run: RunFolder
    dist: DistContext
    ctx: StepContext
    emb: Embedding
    source: Path | None
    start: int
    end: int
    target: int
    origin: int
    lr_schedule: Schedule
    clip_schedule: Schedule | None
    vectors: dict[str, torch.Tensor]
    init_vectors: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    batches: Iterator[list[int]] = field(repr=False, default=None)  # type: ignore[assignment]
    evaluator: Evaluator | None = None
    previews: list[PreviewSpec] = field(default_factory=list)
    writer: Any = None  # TensorBoard SummaryWriter
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    fresh_optimizer: bool = True
    smoothed: float | None = None
    not_learning_warned: bool = False
    bad_in_a_row: int = 0
    last_good: tuple[dict[str, torch.Tensor], dict] | None = None
    steps_timed: int = 0
    t_start: float = 0.0
    preview_seconds: float = 0.0  # time spent in previews, kept out of the it/s and priced into the ETA
    preview_rounds: int = 0
    unwritable_logs: set[Path] = field(default_factory=set)
    rank_rng: list[dict[str, Any]] = field(default_factory=list)  # every process's generators (main only)
    routing: Any = None  # the kind's layer routing on the UNet (embeddings.kinds.Routing), or None
    scoring: Any = None  # training.scores.LiveScoring, built at the first CLIP score step
    auto_stop: str = ""  # why the run stops early (auto-stop); "" while it goes on

    @property
    def main(self) -> bool:
        return self.dist.is_main

    def say(self, text: str) -> None:
        if self.main:
            self.job.message(text)

    def warn(self, text: str) -> None:
        if self.main:
            self.job.warning(text)

    def live_embedding(self, step: int) -> Embedding:
        meta = {**self.emb.metadata, "settings": self.config.to_dict(), "run": self.run.name,
                "base_model": self.model.name, "base_model_hash": self.model.short_hash}
        return kind_of(self.emb).rebuild(self.emb, self.vectors, step=step, metadata=meta)

    def bundle(self) -> TrainState:
        return TrainState(
            step=self.step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, vectors=self.vectors,
            init_vectors=self.init_vectors, optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler else None,
            rng=capture_rng(self.ctx.generator, self.ctx.prompt_rng),
            rank_rng=self.rank_rng if self.dist.world > 1 else [],
            settings={**self.config.to_dict(), "_origin_step": self.origin}, embedding_name=self.emb.name,
            embedding_metadata=self.emb.metadata, source_path=str(self.source or ""),
            embedding_kind=self.emb.kind, kind_info=self.emb.kind_info,
            not_learning_warned=self.not_learning_warned, smoothed_loss=self.smoothed,
        )

    def save_due(self) -> bool:
        """A save_every snapshot after this step (the same answer on every process)."""
        return bool(self.config.save_every) and self.step % self.config.save_every == 0 and self.step < self.end

    def gather_rng(self) -> None:
        """Every process's generators to the main one, for the bundle it is about to write: each
        process draws its own noise, so an exact resume needs them all. A collective: every process
        calls it where the main one saves (before bookkeeping's save, in finish, on a NaN stop)."""
        if self.dist.world > 1:
            self.rank_rng = self.dist.gather_to_main(capture_rng(self.ctx.generator, self.ctx.prompt_rng)) or []

    def save_state(self) -> list[str]:
        """A snapshot in each format + the resume bundle: what an interrupt or save_every leaves.

        A file that cannot be written (disk full) is a warning and the others are still tried:
        losing one snapshot must not end an hour of training, and the previous files stay intact."""
        failed: list[OSError] = []
        saved = save_snapshot(self.live_embedding(self.step), self.run, self.config.snapshot_formats, self.step,
                              self.model.tokenizers[0], on_error=failed.append)
        try:
            saved.append(str(save_bundle(self.run.bundle_path, self.bundle())))
        except OSError as e:
            failed.append(SaveError.from_os_error(self.run.bundle_path, e))
        for e in failed:
            self.warn(f"step {self.step}: {e}; training goes on, earlier snapshots and the last resume bundle are kept")
        if saved:
            self.job.emit(events.Files(paths=saved, what=events.Files.SNAPSHOT, step=self.step))
        return saved

    def append_log(self, path: Path, append: Callable[..., None], *args: Any) -> None:
        """A log row that cannot be written is one warning (not one per step) until it works again."""
        try:
            append(*args)
            self.unwritable_logs.discard(path)
        except OSError as e:
            if path not in self.unwritable_logs:
                self.warn(f"step {self.step}: {SaveError.from_os_error(path, e)}; training goes on, rows are missing "
                          f"from {path.name} until it can be written again")
            self.unwritable_logs.add(path)

    def evaluate(self) -> None:
        ev = self.evaluator.loss(self.vectors)
        self.append_log(self.run.eval_csv, self.run.append_eval, self.step, ev)
        self.job.emit(events.Eval(step=self.step, loss=ev))
        if self.writer is not None:
            self.writer.add_scalar("loss/eval", ev, self.step)

    def write_previews(self, emb: Embedding, png_embedding: bool = True) -> None:
        """Every preview of this step; a failed one is a warning (it must not end a long run).
        `png_embedding=False` for the untrained embedding's previews: nothing was learned to save."""
        step, t0 = self.step, time.time()
        for k, spec in enumerate(self.previews):
            if self.job.stop_requested:
                break
            self.job.progress(k, len(self.previews), step=step, phase="preview")
            path = self.run.previews / f"{snapshot_name(emb.name, step)}-{k}.png"
            try:
                render_preview(self.model, emb, spec, path, device=self.ctx.plan.device,
                               dtype=self.ctx.plan.weight_dtype, should_stop=lambda: self.job.stop_requested)
            except GenerationStopped:
                self.say(f"preview at step {step} stopped by the interrupt")
                break
            except Exception as e:
                self.job.warning(f"preview at step {step} failed: {e}")
                continue
            self.job.emit(events.Preview(step=step, path=str(path), prompt=spec.prompt, seed=spec.seed))
        else:
            self.preview_seconds += time.time() - t0
            self.preview_rounds += 1
        self.job.progress(len(self.previews), len(self.previews), step=step, phase="preview")
        if png_embedding and self.config.save_png_embeddings and self.previews and "png" in writable_formats(emb):
            try:
                png = self.run.image_embeddings / f"{snapshot_name(emb.name, step)}.png"
                first = self.run.previews / f"{snapshot_name(emb.name, step)}-0.png"
                save_embedding(emb.copy(name=snapshot_name(emb.name, step)), png, fmt="png",
                               preview=first if first.is_file() else None)
                self.job.emit(events.Files(paths=[str(png)], what=events.Files.PNG_EMBEDDING, step=step))
            except Exception as e:
                self.job.warning(f"PNG embedding at step {step} failed: {e}")


def train(
    config: TrainConfig,
    model,
    data_dir: DataDir,
    job: Job | None = None,
    *,
    run: RunFolder | None = None,
    resume: bool = False,
    plan: DevicePlan | None = None,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Train `config.embedding` on `config.dataset` with `model` (a loaded models.BaseModel).

    `run`: the run folder (created when None). `resume`: continue from the run's resume bundle
    (optimizer, RNG and data position restored: exact continuation). Returns TrainResult.to_dict().
    """
    job = job or Job(id="local", kind="train", title="train")
    dist = dist or DistContext.single()
    config.validate()
    st = prepare(config, model, data_dir, job, run=run, resume=resume, plan=plan, dist=dist)
    if isinstance(st, TrainResult):
        return st.to_dict()

    st.say(f"training steps {st.start} -> {st.end} ({st.end - st.start} step(s)), batch {config.batch_size} x "
           f"{config.grad_accum}" + (f" x {dist.world} processes" if dist.world > 1 else ""))
    stopped = "finished"
    try:
        while st.step < st.end:
            outcome = guarded_step(st)
            if outcome.kind == OutcomeKind.STOP:
                stopped = "schedule ended"
                break
            if outcome.kind == OutcomeKind.SKIPPED:
                continue
            if st.save_due():
                st.gather_rng()
            if st.main:
                bookkeeping(st, outcome)
            if st.auto_stop:
                stopped = "auto-stopped"
                break
            if job.stop_requested:
                stopped = "interrupted"
                break
    finally:
        _release(st)
    return finish(st, stopped).to_dict()


# ---- 1. prepare ---------------------------------------------------------------------------------------
def prepare(config: TrainConfig, model, data_dir: DataDir, job: Job, *, run: RunFolder | None, resume: bool,
            plan: DevicePlan | None, dist: DistContext) -> RunState | TrainResult:
    """Everything before the first step, in the order a reader would check it by hand."""
    main = dist.is_main
    say = job.message if main else (lambda _text: None)
    warn = job.warning if main else (lambda _text: None)

    # ---- 1.1 the embedding and where training starts ------------------------------------------------
    state = load_bundle(run.bundle_path) if resume and run is not None else None
    if state is not None:
        emb = resumed_embedding(state)
        source = Path(state.source_path) if state.source_path else None
        say(f"resuming {emb.name} at step {emb.step} from {run.bundle_path.name} (optimizer and RNG restored)")
    else:
        emb, source = resolve_embedding(config.embedding, data_dir)
        say(f"embedding {emb.name}: {emb.num_vectors} vector(s), stored step {emb.step}, from {source}"
            + ("; continuing from a bare embedding file: fresh optimizer" if emb.step > 0 else ""))
    if not emb.fits(model.widths):
        raise TrainingError(f"{emb.name}: {emb.mismatch_reason(model.widths)} ({model.label}); "
                            "create the embedding for this model or pick a matching model")
    try:  # a kind tied to one layer's outputs (direct) trains at the run's clip skip, or refuses
        tied = kind_of(emb).at_clip_skip(emb, model, config.clip_skip)
    except EmbeddingError as e:
        raise TrainingError(str(e)) from e
    if tied is not emb:
        say(f"{emb.name}: untrained, restarted at the text encoder's outputs at clip skip {config.clip_skip}")
        emb = tied
    start = emb.step
    target = start + config.more_steps if config.more_steps > 0 else config.max_steps
    origin = int(state.settings.get("_origin_step", start)) if state is not None else start
    run = run or RunFolder.create(data_dir.runs, emb.name, config.run_name)

    def nothing_to_do(reason: str) -> TrainResult:
        say(reason)
        return TrainResult(str(run.path), start, 0, "nothing to do", reason=reason)

    if target <= start:
        return nothing_to_do(f"nothing to train: {emb.name} is already at step {start} and max steps is {target}; "
                             "raise max steps or use 'more steps'")
    try:
        lr_schedule, clip_schedule = config.schedules(max_steps=target, cur_step=origin)
    except ConfigError as e:
        return nothing_to_do(f"nothing to train: {e}")
    end = min(target, lr_schedule.end_step)
    if end <= start or lr_schedule.value_at(start) is None:
        return nothing_to_do(f"nothing to train: the learning-rate schedule {config.lr!r} ends at step "
                             f"{lr_schedule.end_step}, and {emb.name} is already at step {start}")
    for note in lr_schedule.notes:
        say(f"lr schedule: {note}")

    # ---- 1.2 the data -------------------------------------------------------------------------------
    opts = config.data_options()
    folder = resolve_dataset(config.dataset, data_dir)
    records, skipped = scan_dataset(folder, opts)  # decode every image once, shared with the check
    report = check_dataset(folder, opts, emb.name, model.tokenizers[0], templates_dir=data_dir.templates,
                           scanned=(records, skipped))
    if not report.ok:
        raise TrainingError(f"{folder}: the dataset check failed: " + "; ".join(report.problems))
    for path, why in skipped:
        warn(f"skipped {path}: {why}")
    lines = load_template(config.template, data_dir.templates)
    say(f"dataset {folder}: {len(records)} image(s); template {config.template} ({len(lines)} line(s))")

    # ---- 1.3 device, frozen model, latents ------------------------------------------------------------
    plan = plan or choose_device(config.mixed_precision, dist.device)
    _freeze_and_place(model, plan, config.gradient_checkpointing)
    say(f"device {plan.label}; model {model.label}")
    t0 = time.time()
    cache = LatentCache.build(
        model.vae, records, opts, sampling=config.latent_sampling, flips=config.flip_p > 0, device=plan.device,
        dtype=plan.weight_dtype, seed=config.seed, load_pixels=load_pixels,
        on_progress=(lambda d, n: job.progress(d, n, phase="latents")) if main else None,
    )
    model.vae.to("cpu")  # leaves the accelerator until a preview needs it
    say(f"cached {len(cache)} latent(s) ({config.latent_sampling}) in {time.time() - t0:.1f}s")
    noise_scheduler = DDPMScheduler.from_config(model.scheduler.config)
    kind = kind_of(emb)
    try:
        layout = kind.layout(emb, model.unet)  # the layer routing this kind needs (None: every layer alike)
    except EmbeddingError as e:
        raise TrainingError(str(e)) from e
    encoder = PromptEncoder.for_embeddings(model, [emb], config.clip_skip, layout)
    if layout is not None:
        say(f"{kind.label}: {layout.size} {layout.grouping} group(s) over {len(layout.layers)} cross-attention layers")

    # ---- 1.4 trainable vectors, optimizer, random generators ------------------------------------------
    vectors = {k: v.to(plan.device, torch.float32).clone().requires_grad_(True) for k, v in kind.trainable(emb).items()}
    optimizer = torch.optim.AdamW(list(vectors.values()), lr=lr_schedule.value_at(start),
                                  weight_decay=config.weight_decay)
    generator = torch.Generator(device="cpu").manual_seed(config.seed * 1000 + dist.rank)
    prompt_rng = random.Random(config.seed * 1000 + dist.rank)
    output_space = kind.encoder_inputs(emb) is not None  # direct: the vectors are not token embeddings
    if config.density_weight > 0 and output_space:
        warn(f"{kind.label}: the density regulariser pulls vectors towards token embeddings, and these vectors are "
             "text-encoder outputs; it is off for this run")
    density = (DensityPrior(model, config.density_weight, plan.device)
               if config.density_weight > 0 and not output_space else None)
    unwritable = [f for f in config.snapshot_formats if f not in writable_formats(emb)]
    if unwritable:
        warn(f"{kind.label}: no {', '.join(unwritable)} files (they would need a standard part); .safetensors only")
    at_timesteps = functools.partial(kind.live_at, emb) if kind.timed else None
    ctx = StepContext(model, encoder, noise_scheduler, cache, records, PromptBuilder(lines, emb.name, opts, prompt_rng),
                      emb.name, config, plan, generator, prompt_rng, end, density, at_timesteps)
    st = RunState(config, model, data_dir, job, run, dist, ctx, emb, source, start, end, target, origin,
                  lr_schedule, clip_schedule, vectors, init_vectors={k: v.detach().clone() for k, v in vectors.items()},
                  optimizer=optimizer, scaler=torch.amp.GradScaler("cuda") if plan.use_scaler else None, step=start)
    if state is not None:
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
            st.fresh_optimizer = False
        if st.scaler is not None and state.scaler:
            st.scaler.load_state_dict(state.scaler)
        rng, note = rng_for_rank(state, dist.rank, dist.world)
        if rng is not None:
            restore_rng(rng, generator, prompt_rng)
        if note:
            warn(note)
        st.epoch, st.batch_in_epoch = state.epoch, state.batch_in_epoch
        st.init_vectors = {k: v.to(plan.device) for k, v in state.init_vectors.items()} or st.init_vectors
        st.smoothed, st.not_learning_warned = state.smoothed_loss, state.not_learning_warned
        if main:
            run.truncate_logs_after(start)
    st.batches = _micro_batches(st, EpochSampler(records, config.batch_size, config.repeats, config.seed), folder)
    st.routing = install_routing(model.unet, layout)  # removed by _release

    # ---- 1.5 the run folder, evaluation, previews -------------------------------------------------------
    if main:
        remove_stale_temps(run.path, recursive=True)  # a killed run's half-written snapshots
        run.write_settings(config.to_dict())
        if source is not None and source.is_file() and not run.original.exists():
            run.original.mkdir(parents=True, exist_ok=True)
            atomic_write_with(run.original / source.name, lambda tmp: shutil.copy2(source, tmp))
        st.writer = _tensorboard(run) if config.tensorboard else None
        if config.eval_every:
            st.evaluator = build_evaluator(config, model, encoder, noise_scheduler, cache, records, lines, emb.name,
                                           opts, plan, at_timesteps=at_timesteps)
        some = next(iter(cache.entries.values())).mean
        st.previews = preview_specs(config, model, lines[0], emb.name, records[0].caption if records else "",
                                    tuple(some.shape[-2:]))
        if st.evaluator is not None and state is None:  # the baseline the later eval points compare with
            job.emit(events.Eval(step=start, loss=st.evaluator.loss(vectors)))
    st.last_good = _snapshot_state(vectors, optimizer)
    st.t_start = time.time()
    if main and state is None and config.preview_first and st.previews:  # after t_start: priced like the others
        st.write_previews(st.live_embedding(start), png_embedding=False)
    return st


def _freeze_and_place(model, plan: DevicePlan, checkpointing: bool) -> None:
    """Frozen weights on the device in the compute dtype (checked: not one parameter trains)."""
    model.freeze()
    place(model, plan)
    trainable = [n for m in (*model.text_encoders, model.unet, model.vae) for n, p in m.named_parameters()
                 if p.requires_grad]
    assert not trainable, f"model parameters must be frozen, found trainable: {trainable[:3]}"
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
        for te in model.text_encoders:
            te.gradient_checkpointing_enable()
            # transformers checkpoints a layer only in training mode; CLIP's dropout is 0 in SD
            # configs, so train() changes nothing else (diffusers' TI script trains it this way too)
            te.train()


def _release(st: RunState) -> None:
    """Undo what prepare() switched on that outlives the run (the model is cached and shared)."""
    if st.config.gradient_checkpointing:
        st.model.unet.disable_gradient_checkpointing()
        for te in st.model.text_encoders:
            te.gradient_checkpointing_disable()
            te.eval()
    if st.writer is not None:
        st.writer.close()
    if st.routing is not None:
        st.routing.remove()
        st.routing = None


def _micro_batches(st: RunState, sampler: EpochSampler, folder: Path) -> Iterator[list[int]]:
    """Record indices of each micro-batch, forever, from where the run left off; the position is
    kept in `st` so the resume bundle stores it."""
    while True:
        batches = sampler.epoch(st.epoch)
        if not batches:
            raise TrainingError(f"{folder}: no full batch of {st.config.batch_size} image(s) in an epoch")
        while st.batch_in_epoch < len(batches):
            idx = batches[st.batch_in_epoch]
            st.batch_in_epoch += 1
            yield idx
        st.epoch, st.batch_in_epoch = st.epoch + 1, 0


# ---- 2. the guarded optimizer step --------------------------------------------------------------------
def guarded_step(st: RunState) -> Outcome:
    """One optimizer step: accumulate, average across processes, unscale, check, clip, step.

    A non-finite loss or vector restores the last good vectors and optimizer state and counts
    towards `nan_patience` (which stops the run with the last good snapshot saved); an fp16
    overflow is the scaler's business: it lowers its scale and the step is simply skipped."""
    config, dist, vectors = st.config, st.dist, st.vectors
    lr = st.lr_schedule.value_at(st.step)
    if lr is None:
        return Outcome(OutcomeKind.STOP)
    for group in st.optimizer.param_groups:
        group["lr"] = lr
    st.optimizer.zero_grad(set_to_none=True)
    loss_sum = torch.zeros((), device=st.ctx.plan.device)
    for micro in range(config.grad_accum * dist.world):
        idx = next(st.batches)
        if micro % dist.world != dist.rank:
            continue  # another process's share of this step's batches
        loss = micro_step(st.ctx, idx, vectors, st.step)
        scaled = loss / config.grad_accum
        (st.scaler.scale(scaled) if st.scaler else scaled).backward()
        loss_sum += loss.detach()
    grads = [v.grad if v.grad is not None else torch.zeros_like(v) for v in vectors.values()]
    loss_sum = dist.all_reduce_mean(loss_sum)
    dist.all_reduce_mean_(grads)
    for v, g in zip(vectors.values(), grads, strict=True):
        v.grad = g
    if st.scaler:
        st.scaler.unscale_(st.optimizer)  # clip and check the true gradients, not the scaled ones
    loss_value = float(loss_sum) / config.grad_accum
    grads_finite = all(bool(torch.isfinite(g).all()) for g in grads)
    healthy = math.isfinite(loss_value) and (grads_finite or st.scaler is not None)
    if healthy and st.clip_schedule is not None:
        clip = st.clip_schedule.value_at(st.step)
        if config.clip_mode == "value":
            torch.nn.utils.clip_grad_value_(list(vectors.values()), clip)
        else:
            torch.nn.utils.clip_grad_norm_(list(vectors.values()), clip)
    if healthy:
        if st.scaler:
            st.scaler.step(st.optimizer)  # skips by itself when fp16 grads overflowed
            st.scaler.update()
            if not grads_finite:
                return Outcome(OutcomeKind.SKIPPED, loss_value, lr)  # the scaler lowered its scale
        else:
            st.optimizer.step()
        healthy = all(bool(torch.isfinite(v).all()) for v in vectors.values())
    if not healthy:
        _restore_state(vectors, st.optimizer, st.last_good)
        st.bad_in_a_row += 1
        st.warn(f"step {st.step + 1}: non-finite {'loss' if not math.isfinite(loss_value) else 'values'} "
                f"(loss {loss_value}); step skipped and the last good vectors restored "
                f"({st.bad_in_a_row} in a row, stop at {config.nan_patience})")
        if st.bad_in_a_row >= config.nan_patience:
            st.gather_rng()
            paths = st.save_state() if st.main else []
            raise TrainingError(
                f"stopped: {st.bad_in_a_row} non-finite steps in a row at step {st.step} (learning rate "
                f"{lr:g} may be too high, or the data has broken images); the last good vectors are "
                f"saved in {paths[0] if paths else st.run.path}")
        return Outcome(OutcomeKind.SKIPPED, loss_value, lr)
    st.bad_in_a_row = 0
    st.last_good = _snapshot_state(vectors, st.optimizer)
    st.step += 1
    st.steps_timed += 1
    return Outcome(OutcomeKind.STEPPED, loss_value, lr)


def micro_step(ctx: StepContext, idx: list[int], vectors: dict[str, torch.Tensor], step: int) -> torch.Tensor:
    """Loss of one micro-batch with the live vectors (gradient flows into `vectors`)."""
    config, plan = ctx.config, ctx.plan
    flips = [config.flip_p > 0 and ctx.prompt_rng.random() < config.flip_p for _ in idx]
    prompts = [ctx.builder.build(ctx.records[i].caption) for i in idx]
    latents = torch.stack([ctx.cache.latent(i, f, ctx.generator) for i, f in zip(idx, flips, strict=True)])
    noise = torch.randn(latents.shape, generator=ctx.generator).to(plan.device)
    num_timesteps = ctx.noise_scheduler.config.num_train_timesteps
    timesteps = torch.randint(0, num_timesteps, (len(idx),), generator=ctx.generator).to(plan.device)
    weight = None
    if config.alpha_weight:
        ws = [ctx.cache.weight(i, f) for i, f in zip(idx, flips, strict=True)]
        if any(w is not None for w in ws):
            weight = torch.stack([w if w is not None else torch.ones_like(latents[0, :1]) for w in ws])
    # Vector shuffling: a fresh order per occurrence of the name, training time only. Each
    # occurrence gets its own alias so PromptEncoder splices a different permutation there.
    tp = ctx.encoder.tokenize(prompts)
    live: dict[str, dict[str, torch.Tensor]] = {ctx.name: vectors}
    if config.vector_shuffle != "off":
        fixes = []
        n = next(iter(vectors.values())).shape[-2]  # [n, width], or [groups, n, width] for per-layer kinds
        for j, (b, s, nm, k) in enumerate(tp.fixes):
            order = shuffle_order(n, config.vector_shuffle, config.shuffle_prob, step, ctx.end, ctx.prompt_rng)
            if order is None:
                fixes.append((b, s, nm, k))
                continue
            alias = f"{nm}{ALIAS_SEP}{j}"
            live[alias] = {key: v[..., order, :] for key, v in vectors.items()}
            fixes.append((b, s, alias, k))
        tp.fixes = fixes
    if ctx.at_timesteps is not None:  # each row's blend at its own timestep, still one encoder pass
        live = {nm: ctx.at_timesteps(v, timesteps) for nm, v in live.items()}
    time_ids = None
    if ctx.model.family == "sdxl":
        time_ids = sdxl_time_ids([(ctx.records[i].height, ctx.records[i].width) for i in idx],
                                 latents.shape[-2:], ctx.model.vae_scale_factor, plan.device)
    with plan.autocast():
        cond = ctx.encoder.encode(prompts, live, tokenized=tp)
        loss = denoise_loss(ctx.model, ctx.noise_scheduler, latents, noise, timesteps, cond, weight=weight,
                            time_ids=time_ids)
    if ctx.density is not None:
        loss = loss + ctx.density.loss(vectors)
    return loss


# ---- 3. bookkeeping (main process) --------------------------------------------------------------------
def bookkeeping(st: RunState, outcome: Outcome) -> None:
    """After a step: loss.csv, events, the "not learning" check, eval, snapshots, previews."""
    config, step, job = st.config, st.step, st.job
    st.smoothed = outcome.loss if st.smoothed is None else 0.9 * st.smoothed + 0.1 * outcome.loss
    kind = kind_of(st.emb)
    norms = kind.norms(kind.rebuild(st.emb, st.vectors, step=step, metadata={}).vectors)  # the standard part
    grouped = any(v.dim() > 2 for v in st.vectors.values())  # not a one-set kind (direct without groups)
    layer_norms = kind.norms(st.vectors) if grouped else None  # per group: the heat map
    row: dict[str, Any] = {"step": step, "epoch": st.epoch, "loss": outcome.loss, "lr": outcome.lr}
    for k, ns in norms.items():
        row.update({f"norm_{k}_{i}": n for i, n in enumerate(ns)})
    st.append_log(st.run.loss_csv, st.run.append_loss, row)
    elapsed = time.time() - st.t_start - st.preview_seconds
    it_s = st.steps_timed / elapsed if elapsed > 0 else 0.0
    job.emit(events.Loss(step=step, loss=outcome.loss, lr=outcome.lr, smoothed=st.smoothed, epoch=st.epoch))
    job.emit(events.Norms(step=step, norms=norms, layers=layer_norms))
    job.progress(step - st.start, st.end - st.start, step=step, it_s=round(it_s, 4), eta_s=_eta(st, it_s),
                 epoch=st.epoch)
    if st.writer is not None:
        st.writer.add_scalar("loss/train", outcome.loss, step)
        st.writer.add_scalar("loss/smoothed", st.smoothed, step)
        st.writer.add_scalar("lr", outcome.lr, step)
    if config.not_learning_steps and not st.not_learning_warned and step - st.origin >= config.not_learning_steps:
        moved = _relative_change(st.vectors, st.init_vectors)
        if moved < config.not_learning_threshold:
            st.not_learning_warned = True
            st.warn(f"not learning: after {step - st.origin} steps the vectors moved only {moved:.2e} "
                    f"(relative); raise the learning rate or check that prompts contain {st.emb.name!r}")
    if st.evaluator is not None and step % config.eval_every == 0:
        st.evaluate()
    if config.score_every and step % config.score_every == 0:
        score_live(st)
    if config.auto_stop != "off":
        st.auto_stop = auto_stop_due(st)
    if st.save_due():
        st.save_state()
    if config.preview_every and step % config.preview_every == 0:
        st.write_previews(st.live_embedding(step))


# ---- 4. finish ----------------------------------------------------------------------------------------
def finish(st: RunState, stopped: str) -> TrainResult:
    """The last snapshot and bundle, the last preview/eval if the step was off their grid, then the
    final files and the copy into the library (the only save whose failure fails the job)."""
    step, config = st.step, st.config
    if step >= st.end and stopped == "finished" and st.end < st.target:
        stopped = "schedule ended"
    result = TrainResult(str(st.run.path), step, step - st.start, stopped, fresh_optimizer=st.fresh_optimizer)
    st.gather_rng()
    if not st.main:
        return result
    end_saved = st.save_state()
    final = st.live_embedding(step)
    if config.preview_every and step % config.preview_every != 0 and stopped != "interrupted":
        st.write_previews(final)
    if config.eval_every and st.evaluator is not None and step % config.eval_every != 0:
        st.evaluate()
    if config.score_every and step % config.score_every != 0 and stopped != "interrupted":
        score_live(st)
    if st.auto_stop:
        result.reason = st.auto_stop
        st.say(f"auto-stopped at step {step}: {st.auto_stop}; resume to train on")
    try:
        result.files = save_final(final, st.run, config.snapshot_formats)
        result.embedding = str(save_to_library(final, st.source, st.data_dir))
    except OSError as e:
        kept = [p for p in end_saved if p != str(st.run.bundle_path)]
        raise TrainingError(
            f"the final save failed: {e}. The embeddings folder was not changed"
            + (f"; the trained vectors (step {step}) are in {', '.join(kept)}" if kept else "")
            + f"; earlier files in {st.run.path} are intact. Free some space and copy a snapshot, or train again."
        ) from e
    st.job.emit(events.Files(paths=[*result.files.values(), result.embedding], what=events.Files.FINAL, step=step))
    st.say(f"training {stopped} at step {step}; embedding saved to {result.embedding}")
    return result


# ---- helpers ------------------------------------------------------------------------------------------
def _eta(st: RunState, it_s: float) -> float | None:
    """Seconds left: the steps at the loop's own rate plus the previews still to come (measured
    once one round ran; before that guessed from the step time: a preview step is ~1/3 of a
    training step per image, twice with CFG, scaled by its size)."""
    if it_s <= 0:
        return None
    left = (st.end - st.step) / it_s
    every = st.config.preview_every
    if every and st.previews:
        rounds = st.end // every - st.step // every + (1 if st.end % every else 0)
        if st.preview_rounds:
            per_round = st.preview_seconds / st.preview_rounds
        else:
            spec = st.previews[0]
            res = st.config.resolution or 512
            scale = (spec.width * spec.height) / (res * res) / max(1, st.config.batch_size * st.config.grad_accum)
            per_round = len(st.previews) * spec.steps * (2 if spec.cfg > 1 else 1) * scale / (3 * it_s)
        left += rounds * per_round
    return round(left, 1)


def _snapshot_state(vectors: dict[str, torch.Tensor], optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    return {k: v.detach().clone() for k, v in vectors.items()}, copy.deepcopy(optimizer.state_dict())


def _restore_state(vectors: dict[str, torch.Tensor], optimizer, saved) -> None:
    good, opt_state = saved
    with torch.no_grad():
        for k, v in vectors.items():
            v.copy_(good[k])
    optimizer.load_state_dict(copy.deepcopy(opt_state))
    optimizer.zero_grad(set_to_none=True)


def _relative_change(vectors, init) -> float:
    num = sum(float((v.detach() - init[k]).norm()) ** 2 for k, v in vectors.items()) ** 0.5
    den = sum(float(init[k].norm()) ** 2 for k in vectors) ** 0.5
    return num / den if den > 0 else num


def _tensorboard(run: RunFolder):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars are in loss.csv anyway
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


# ---- inputs -----------------------------------------------------------------------------------------
def resumed_embedding(state: TrainState) -> Embedding:
    """The embedding a resume bundle holds: its kind rebuilt from the trained tensors."""
    template = Embedding(state.embedding_name, {k: v.reshape(-1, *v.shape[-2:])[0] for k, v in state.vectors.items()},
                         state.step, dict(state.embedding_metadata), kind=state.embedding_kind,
                         kind_info=dict(state.kind_info))
    return get_kind(state.embedding_kind).rebuild(template, state.vectors, step=state.step,
                                                  metadata=dict(state.embedding_metadata))


def resolve_embedding(spec: str, data_dir: DataDir) -> tuple[Embedding, Path]:
    """The embedding `spec` means, by the library's one rule (path, embedded name, file stem)."""
    try:
        entry = EmbeddingLibrary.for_data(data_dir).resolve(spec)
        return entry.require_embedding(), entry.path
    except EmbeddingError as e:
        raise TrainingError(str(e)) from e


def resolve_dataset(spec: str, data_dir: DataDir) -> Path:
    """The dataset folder `spec` means, by the data folder's one rule (`DataDir.find_dataset`)."""
    try:
        return data_dir.find_dataset(spec)
    except DatasetNotFoundError as e:
        raise TrainingError(str(e)) from e


__all__ = ["Outcome", "OutcomeKind", "RunState", "StepContext", "TrainResult", "TrainingError", "bookkeeping",
           "finish", "guarded_step", "micro_step", "prepare", "train"]
