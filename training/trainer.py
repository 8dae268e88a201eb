"""The textual-inversion training loop, readable top to bottom.

Only the embedding's vectors learn. The base model is frozen (`requires_grad_(False)`, checked
before the first step), the vectors are spliced into the token-embedding output by
`embeddings.prompt.PromptEncoder` (no full-vocabulary gradient, nothing to restore), latents are
cached once (training.latents), and each optimizer step is: prompts -> text encoder(s) with the
live vectors -> noised latents -> UNet -> MSE on epsilon or v -> backward into the vectors ->
unscale, health check, clip -> AdamW.

Events emitted on the job (all data JSON-able; the UI plots them, the CLI prints them):

=========  ==================================================================================
progress   done, total (optimizer steps in this run), step (absolute), it_s, eta_s, epoch
loss       step, loss (this step, mean over accumulation), lr, smoothed (EMA 0.9), epoch
norms      step, norms {encoder_key: [L2 norm per vector]}
eval       step, loss (the deterministic evaluation loss, training.evaluate)
preview    step, path, prompt, seed
files      step, paths [str], what ("snapshot", "bundle", "final")
message    text
warning    text (skipped non-finite step, not learning, skipped images, a file not saved, ...)
=========  ==================================================================================

A full disk: a snapshot, resume bundle, preview or log row that cannot be written is a warning
naming the file, and training goes on (every write is atomic, so the last good snapshot and bundle
stay as they were, resumable). Only the final save is fatal: if a file in final/ cannot be
written, the job fails naming it and the embeddings folder is left unchanged.

The job's result (also the return value) is a dict: run_dir, embedding (the final file in the
embeddings folder), files {format: path} in the run's final/ folder, step, steps_done, stopped
("finished", "schedule ended", "interrupted", "nothing to do") and fresh_optimizer.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError
from embeddings.names import shadowing_pairs
from jobs.registry import Job
from training.checkpoint import TrainState, capture_rng, load_bundle, restore_rng, save_bundle
from training.config import ConfigError, TrainConfig
from training.device import DevicePlan, choose_device
from training.distributed import DistContext
from training.latents import LatentCache
from training.loss import denoise_loss
from training.run_folder import RunFolder
from workspace.atomic import SaveError, atomic_write_with
from workspace.datadir import DataDir

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".png", ".webp")
SNAPSHOT_DIGITS = 6  # <name>-000500: equal-length names never shadow each other in a prompt


class TrainingError(RuntimeError):
    """The run cannot start or had to stop. The message says why and what to do."""


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
    main = dist.is_main
    say = job.message if main else (lambda _text: None)
    warn = job.warning if main else (lambda _text: None)
    config.validate()

    # ---- 1. the embedding and where training starts -----------------------------------------
    state = load_bundle(run.bundle_path) if resume and run is not None else None
    if state is not None:
        emb = Embedding(state.embedding_name, state.vectors, state.step, dict(state.embedding_metadata))
        source = Path(state.source_path) if state.source_path else None
        say(f"resuming {emb.name} at step {emb.step} from {run.bundle_path.name} (optimizer and RNG restored)")
    else:
        emb, source = resolve_embedding(config.embedding, data_dir)
        say(f"embedding {emb.name}: {emb.num_vectors} vector(s), stored step {emb.step}, from {source}"
            + ("; continuing from a bare embedding file: fresh optimizer" if emb.step > 0 else ""))
    if not emb.fits(model.widths):
        raise TrainingError(f"{emb.name}: {emb.mismatch_reason(model.widths)} ({model.label}); "
                            "create the embedding for this model or pick a matching model")
    start = emb.step
    target = start + config.more_steps if config.more_steps > 0 else config.max_steps
    origin = int(state.settings.get("_origin_step", start)) if state is not None else start
    run = run or RunFolder.create(data_dir.runs, emb.name, config.run_name)

    def nothing_to_do(reason: str) -> dict[str, Any]:
        say(reason)
        return TrainResult(str(run.path), start, 0, "nothing to do", reason=reason).to_dict()

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

    # ---- 2. the data ----------------------------------------------------------------------------
    from training.dataset import EpochSampler, PromptBuilder, check_dataset, load_pixels, scan_dataset
    from training.templates import load_template

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

    # ---- 3. device, frozen model, latents -----------------------------------------------------------
    plan = plan or choose_device(config.mixed_precision, dist.device)
    model.freeze()
    for module in (*model.text_encoders, model.unet):
        _move(module, plan.device, plan.weight_dtype)
    trainable = [n for m in (*model.text_encoders, model.unet, model.vae) for n, p in m.named_parameters()
                 if p.requires_grad]
    assert not trainable, f"model parameters must be frozen, found trainable: {trainable[:3]}"
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
        for te in model.text_encoders:
            te.gradient_checkpointing_enable()
            # transformers checkpoints a layer only in training mode; CLIP's dropout is 0 in SD
            # configs, so train() changes nothing else (diffusers' TI script trains it this way too)
            te.train()
    say(f"device {plan.label}; model {model.label}")
    flips = config.flip_p > 0
    t0 = time.time()
    cache = LatentCache.build(
        model.vae, records, opts, sampling=config.latent_sampling, flips=flips, device=plan.device,
        dtype=plan.weight_dtype, seed=config.seed, load_pixels=load_pixels,
        on_progress=(lambda d, n: job.progress(d, n, phase="latents")) if main else None,
    )
    model.vae.to("cpu")  # leaves the accelerator until a preview needs it
    say(f"cached {len(cache)} latent(s) ({config.latent_sampling}) in {time.time() - t0:.1f}s")

    from diffusers import DDPMScheduler

    from embeddings.prompt import PromptEncoder

    noise_scheduler = DDPMScheduler.from_config(model.scheduler.config)
    num_timesteps = noise_scheduler.config.num_train_timesteps
    encoder = PromptEncoder(model, {emb.name: emb.num_vectors}, clip_skip=config.clip_skip)

    # ---- 4. trainable vectors, optimizer, random generators ------------------------------------------
    vectors = {k: v.to(plan.device, torch.float32).clone().requires_grad_(True) for k, v in emb.vectors.items()}
    optimizer = torch.optim.AdamW(list(vectors.values()), lr=lr_schedule.value_at(start),
                                  weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if plan.use_scaler else None
    generator = torch.Generator(device="cpu").manual_seed(config.seed * 1000 + dist.rank)
    prompt_rng = random.Random(config.seed * 1000 + dist.rank)
    builder = PromptBuilder(lines, emb.name, opts, prompt_rng)
    sampler = EpochSampler(records, config.batch_size, config.repeats, config.seed)
    init_vectors = {k: v.detach().clone() for k, v in vectors.items()}
    epoch, batch_in_epoch = 0, 0
    fresh_optimizer = True
    smoothed = None
    not_learning_warned = False
    if state is not None:
        if state.optimizer is not None:
            optimizer.load_state_dict(state.optimizer)
            fresh_optimizer = False
        if scaler is not None and state.scaler:
            scaler.load_state_dict(state.scaler)
        restore_rng(state.rng, generator, prompt_rng)
        epoch, batch_in_epoch = state.epoch, state.batch_in_epoch
        init_vectors = {k: v.to(plan.device) for k, v in state.init_vectors.items()} or init_vectors
        smoothed, not_learning_warned = state.smoothed_loss, state.not_learning_warned
        run.truncate_logs_after(start) if main else None
    settings = {**config.to_dict(), "_origin_step": origin}

    # ---- 5. the run folder ------------------------------------------------------------------------
    if main:
        run.write_settings(config.to_dict())
        if source is not None and source.is_file() and not run.original.exists():
            run.original.mkdir(parents=True, exist_ok=True)
            atomic_write_with(run.original / source.name, lambda tmp: shutil.copy2(source, tmp))
    writer = _tensorboard(run) if (config.tensorboard and main) else None
    evaluator = _build_evaluator(config, model, encoder, noise_scheduler, cache, records, lines, emb.name, opts,
                                 plan) if (config.eval_every and main) else None
    previews = _preview_specs(config, model, lines, emb.name, records, cache) if main else []

    def live_embedding(step: int, name: str | None = None) -> Embedding:
        meta = {**emb.metadata, "settings": config.to_dict(), "run": run.name, "base_model": model.name,
                "base_model_hash": model.short_hash}
        return Embedding(name or emb.name, {k: v.detach().cpu() for k, v in vectors.items()}, step, meta)

    def save_state(step: int) -> list[str]:
        """A snapshot in each format + the resume bundle: what an interrupt or save_every leaves.

        A file that cannot be written (disk full) is a warning and the others are still tried:
        losing one snapshot must not end an hour of training, and the previous files stay intact."""
        failed: list[OSError] = []
        saved = save_snapshot(live_embedding(step), run, config.snapshot_formats, step, model.tokenizers[0],
                              on_error=failed.append)
        bundle = TrainState(
            step=step, epoch=epoch, batch_in_epoch=batch_in_epoch, vectors=vectors, init_vectors=init_vectors,
            optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
            rng=capture_rng(generator, prompt_rng), settings=settings, embedding_name=emb.name,
            embedding_metadata=emb.metadata, source_path=str(source or ""),
            not_learning_warned=not_learning_warned, smoothed_loss=smoothed,
        )
        try:
            saved.append(str(save_bundle(run.bundle_path, bundle)))
        except OSError as e:
            failed.append(SaveError.from_os_error(run.bundle_path, e))
        for e in failed:
            warn(f"step {step}: {e}; training goes on, earlier snapshots and the last resume bundle are kept")
        if saved:
            job.emit("files", step=step, paths=saved, what="snapshot")
        return saved

    unwritable_logs: set[Path] = set()

    def append_log(path: Path, append: Callable[..., None], *args: Any) -> None:
        """A log row that cannot be written is one warning (not one per step) until it works again."""
        try:
            append(*args)
            unwritable_logs.discard(path)
        except OSError as e:
            if path not in unwritable_logs:
                warn(f"step {step}: {SaveError.from_os_error(path, e)}; training goes on, rows are missing "
                     f"from {path.name} until it can be written again")
            unwritable_logs.add(path)

    def micro_batches():
        """(epoch, position after, record indices) forever, starting where the run left off."""
        nonlocal epoch, batch_in_epoch
        while True:
            batches = sampler.epoch(epoch)
            if not batches:
                raise TrainingError(f"{folder}: no full batch of {config.batch_size} image(s) in an epoch")
            while batch_in_epoch < len(batches):
                idx = batches[batch_in_epoch]
                batch_in_epoch += 1
                yield idx
            epoch, batch_in_epoch = epoch + 1, 0

    stream = micro_batches()

    # ---- 6. the loop ---------------------------------------------------------------------------------
    step = start
    if evaluator is not None and state is None:  # the baseline the later eval points compare with
        job.emit("eval", step=step, loss=evaluator.loss(vectors))
    last_good = _snapshot_state(vectors, optimizer)
    bad_in_a_row = 0
    stopped = "finished"
    t_start, steps_timed = time.time(), 0
    say(f"training steps {start} -> {end} ({end - start} step(s)), batch {config.batch_size} x {config.grad_accum}"
        + (f" x {dist.world} processes" if dist.world > 1 else ""))
    try:
        while step < end:
            lr = lr_schedule.value_at(step)
            if lr is None:
                stopped = "schedule ended"
                break
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss_sum = torch.zeros((), device=plan.device)
            for micro in range(config.grad_accum * dist.world):
                idx = next(stream)
                if micro % dist.world != dist.rank:
                    continue  # another process's share of this step's batches
                loss = _micro_step(model, encoder, noise_scheduler, num_timesteps, cache, records, idx, builder,
                                   vectors, emb.name, config, plan, generator, prompt_rng, step, end)
                scaled = loss / config.grad_accum
                (scaler.scale(scaled) if scaler else scaled).backward()
                loss_sum += loss.detach()
            grads = [v.grad if v.grad is not None else torch.zeros_like(v) for v in vectors.values()]
            loss_sum = dist.all_reduce_mean(loss_sum)
            dist.all_reduce_mean_(grads)
            for v, g in zip(vectors.values(), grads, strict=True):
                v.grad = g
            if scaler:
                scaler.unscale_(optimizer)  # clip and check the true gradients, not the scaled ones
            loss_value = float(loss_sum) / config.grad_accum
            grads_finite = all(bool(torch.isfinite(g).all()) for g in grads)
            healthy = math.isfinite(loss_value) and (grads_finite or scaler is not None)
            if healthy and clip_schedule is not None:
                clip = clip_schedule.value_at(step)
                if config.clip_mode == "value":
                    torch.nn.utils.clip_grad_value_(list(vectors.values()), clip)
                else:
                    torch.nn.utils.clip_grad_norm_(list(vectors.values()), clip)
            if healthy:
                if scaler:
                    scaler.step(optimizer)  # skips by itself when fp16 grads overflowed
                    scaler.update()
                    if not grads_finite:
                        continue  # the scaler lowered its scale; the step did not happen
                else:
                    optimizer.step()
                healthy = all(bool(torch.isfinite(v).all()) for v in vectors.values())
            if not healthy:
                _restore_state(vectors, optimizer, last_good)
                bad_in_a_row += 1
                warn(f"step {step + 1}: non-finite {'loss' if not math.isfinite(loss_value) else 'values'} "
                     f"(loss {loss_value}); step skipped and the last good vectors restored "
                     f"({bad_in_a_row} in a row, stop at {config.nan_patience})")
                if bad_in_a_row >= config.nan_patience:
                    paths = save_state(step) if main else []
                    raise TrainingError(
                        f"stopped: {bad_in_a_row} non-finite steps in a row at step {step} (learning rate "
                        f"{lr:g} may be too high, or the data has broken images); the last good vectors are "
                        f"saved in {paths[0] if paths else run.path}")
                continue
            bad_in_a_row = 0
            last_good = _snapshot_state(vectors, optimizer)
            step += 1
            steps_timed += 1

            # -- bookkeeping (main process only): logs, events, snapshots, previews -------------
            if not main:
                if job.stop_requested:
                    break
                continue
            smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
            norms = {k: [float(x) for x in v.detach().norm(dim=1)] for k, v in vectors.items()}
            row: dict[str, Any] = {"step": step, "epoch": epoch, "loss": loss_value, "lr": lr}
            for k, ns in norms.items():
                row.update({f"norm_{k}_{i}": n for i, n in enumerate(ns)})
            append_log(run.loss_csv, run.append_loss, row)
            elapsed = time.time() - t_start
            it_s = steps_timed / elapsed if elapsed > 0 else 0.0
            job.emit("loss", step=step, loss=loss_value, lr=lr, smoothed=smoothed, epoch=epoch)
            job.emit("norms", step=step, norms=norms)
            job.progress(step - start, end - start, step=step, it_s=round(it_s, 4),
                         eta_s=round((end - step) / it_s, 1) if it_s > 0 else None, epoch=epoch)
            if writer is not None:
                writer.add_scalar("loss/train", loss_value, step)
                writer.add_scalar("loss/smoothed", smoothed, step)
                writer.add_scalar("lr", lr, step)
            if (config.not_learning_steps and not not_learning_warned
                    and step - origin >= config.not_learning_steps):
                moved = _relative_change(vectors, init_vectors)
                if moved < config.not_learning_threshold:
                    not_learning_warned = True
                    warn(f"not learning: after {step - origin} steps the vectors moved only {moved:.2e} "
                         f"(relative); raise the learning rate or check that prompts contain {emb.name!r}")
            if evaluator is not None and step % config.eval_every == 0:
                ev = evaluator.loss(vectors)
                append_log(run.eval_csv, run.append_eval, step, ev)
                job.emit("eval", step=step, loss=ev)
                if writer is not None:
                    writer.add_scalar("loss/eval", ev, step)
            if config.save_every and step % config.save_every == 0 and step < end:
                save_state(step)
            if config.preview_every and step % config.preview_every == 0:
                _write_previews(job, model, live_embedding(step), previews, run, plan, step, config)
            if job.stop_requested:
                stopped = "interrupted"
                break
    finally:
        if config.gradient_checkpointing:
            model.unet.disable_gradient_checkpointing()
            for te in model.text_encoders:
                te.gradient_checkpointing_disable()
                te.eval()
        if writer is not None:
            writer.close()

    # ---- 7. the end: final files, bundle ---------------------------------------------------------------
    if step >= end and stopped == "finished" and end < target:
        stopped = "schedule ended"
    result = TrainResult(str(run.path), step, step - start, stopped, fresh_optimizer=fresh_optimizer)
    if not main:
        return result.to_dict()
    end_saved = save_state(step)
    final = live_embedding(step)
    if config.preview_every and step % config.preview_every != 0:
        _write_previews(job, model, final, previews, run, plan, step, config)
    if config.eval_every and evaluator is not None and step % config.eval_every != 0:
        ev = evaluator.loss(vectors)
        append_log(run.eval_csv, run.append_eval, step, ev)
        job.emit("eval", step=step, loss=ev)
    try:
        result.files = save_final(final, run, config.snapshot_formats)
        result.embedding = str(save_to_library(final, source, data_dir))
    except OSError as e:
        kept = [p for p in end_saved if p != str(run.bundle_path)]
        raise TrainingError(
            f"the final save failed: {e}. The embeddings folder was not changed"
            + (f"; the trained vectors (step {step}) are in {', '.join(kept)}" if kept else "")
            + f"; earlier files in {run.path} are intact. Free some space and copy a snapshot, or train again."
        ) from e
    job.emit("files", step=step, paths=[*result.files.values(), result.embedding], what="final")
    say(f"training {stopped} at step {step}; embedding saved to {result.embedding}")
    return result.to_dict()


# ---- one micro-batch ----------------------------------------------------------------------------------
def _micro_step(model, encoder, noise_scheduler, num_timesteps, cache, records, idx, builder, vectors, name,
                config, plan, generator, prompt_rng, step, end) -> torch.Tensor:
    """Loss of one micro-batch with the live vectors (gradient flows into `vectors`)."""
    from training.vector_shuffle import shuffle_order

    flips = [config.flip_p > 0 and prompt_rng.random() < config.flip_p for _ in idx]
    prompts = [builder.build(records[i].caption) for i in idx]
    latents = torch.stack([cache.latent(i, f, generator) for i, f in zip(idx, flips, strict=True)])
    noise = torch.randn(latents.shape, generator=generator).to(plan.device)
    timesteps = torch.randint(0, num_timesteps, (len(idx),), generator=generator).to(plan.device)
    weight = None
    if config.alpha_weight:
        ws = [cache.weight(i, f) for i, f in zip(idx, flips, strict=True)]
        if any(w is not None for w in ws):
            weight = torch.stack([w if w is not None else torch.ones_like(latents[0, :1]) for w in ws])
    # Vector shuffling: a fresh order per occurrence of the name, training time only. Each
    # occurrence gets its own alias so PromptEncoder splices a different permutation there.
    tp = encoder.tokenize(prompts)
    live: dict[str, dict[str, torch.Tensor]] = {name: vectors}
    if config.vector_shuffle != "off":
        fixes = []
        n = next(iter(vectors.values())).shape[0]
        for j, (b, s, nm, k) in enumerate(tp.fixes):
            order = shuffle_order(n, config.vector_shuffle, config.shuffle_prob, step, end, prompt_rng)
            if order is None:
                fixes.append((b, s, nm, k))
                continue
            alias = f"{nm}\x00{j}"
            live[alias] = {key: v[order] for key, v in vectors.items()}
            fixes.append((b, s, alias, k))
        tp.fixes = fixes
    time_ids = None
    if model.family == "sdxl":
        h, w = latents.shape[-2] * model.vae_scale_factor, latents.shape[-1] * model.vae_scale_factor
        time_ids = torch.tensor([[records[i].height, records[i].width, 0, 0, h, w] for i in idx],
                                dtype=torch.float32, device=plan.device)
    with plan.autocast():
        cond = encoder.encode(prompts, live, tokenized=tp)
        return denoise_loss(model, noise_scheduler, latents, noise, timesteps, cond, weight=weight,
                            time_ids=time_ids)


def _move(module, device: torch.device, dtype: torch.dtype) -> None:
    """Move a frozen module; the dtype only when it changes (diffusers warns on every cast)."""
    if next(module.parameters()).dtype != dtype:
        module.to(device=device, dtype=dtype)
    else:
        module.to(device=device)


# ---- health guard helpers ---------------------------------------------------------------------------
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


# ---- inputs -----------------------------------------------------------------------------------------
def resolve_embedding(spec: str, data_dir: DataDir) -> tuple[Embedding, Path]:
    """An embedding by path, or by name in the embeddings folder (any supported format)."""
    from embeddings.formats import load_embedding

    spec = (spec or "").strip()
    if not spec:
        raise TrainingError("no embedding given: create one first (python app.py create NAME) or give a file")
    path = Path(spec).expanduser()
    if not path.is_file():
        candidates = [data_dir.embeddings / f"{spec}{s}" for s in EMBEDDING_SUFFIXES]
        candidates += [p for p in data_dir.embeddings.rglob("*") if p.stem == spec and p.suffix in EMBEDDING_SUFFIXES]
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise TrainingError(f"embedding {spec!r} not found: not a file and not in {data_dir.embeddings}")
        path = found[0]
    try:
        return load_embedding(path), path
    except EmbeddingError as e:
        raise TrainingError(str(e)) from e


def resolve_dataset(spec: str, data_dir: DataDir) -> Path:
    spec = (spec or "").strip()
    if not spec:
        raise TrainingError("no dataset folder given")
    path = Path(spec).expanduser()
    if not path.is_dir() and (data_dir.datasets / spec).is_dir():
        path = data_dir.datasets / spec
    if not path.is_dir():
        raise TrainingError(f"dataset {spec!r}: no such folder (nor in {data_dir.datasets})")
    return path


# ---- outputs ----------------------------------------------------------------------------------------
def snapshot_name(name: str, step: int) -> str:
    return f"{name}-{step:0{SNAPSHOT_DIGITS}d}"


def save_snapshot(emb: Embedding, run: RunFolder, formats: list[str], step: int, tokenizer,
                  on_error: Callable[[OSError], object] | None = None) -> list[str]:
    """`snapshots/<name>-<step>.<fmt>`; the embedding inside is named like the file, so it loads
    as its own embedding beside the final one. Names are zero-padded to one length, so no two
    snapshot names of a run shadow each other in a prompt (checked).

    `on_error`: given a file that cannot be written (a `SaveError` naming it), the other formats
    are still saved and the error is passed to it; without it the error is raised."""
    from embeddings.formats import save_embedding

    snap_name = snapshot_name(emb.name, step)
    snap = emb.copy(name=snap_name)
    others = {p.name.split(".")[0] for p in run.snapshot_files()} | {snap_name}
    pairs = shadowing_pairs(tokenizer, sorted(n for n in others if n.startswith(f"{emb.name}-")))
    if pairs:
        raise TrainingError(f"snapshot names would shadow each other in prompts: {pairs[:3]}")
    saved = []
    for fmt in formats:
        target = run.image_embeddings / f"{snap_name}.png" if fmt == "png" else run.snapshots / f"{snap_name}.{fmt}"
        try:
            saved.append(str(save_embedding(snap, target, fmt=fmt)))
        except OSError as e:
            if on_error is None:
                raise
            on_error(SaveError.from_os_error(target, e))
    return saved


def save_final(emb: Embedding, run: RunFolder, formats: list[str]) -> dict[str, str]:
    from embeddings.formats import save_embedding

    files = {}
    for fmt in formats:
        files[fmt] = str(save_embedding(emb, run.final / f"{emb.name}.{fmt}", fmt=fmt))
    return files


def save_to_library(emb: Embedding, source: Path | None, data_dir: DataDir) -> Path:
    """The trained embedding goes back to the embeddings folder, atomically replacing the file it
    came from when that file is there and in a writable format (.safetensors/.pt); otherwise it is
    written as `<embeddings>/<name>.safetensors`. The original is kept in the run's original/."""
    from embeddings.formats import save_embedding

    root = data_dir.embeddings.resolve()
    if source is not None and source.suffix in (".safetensors", ".pt") and root in source.resolve().parents:
        return Path(save_embedding(emb, source))
    return Path(save_embedding(emb, root / f"{emb.name}.safetensors"))


def _tensorboard(run: RunFolder):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: scalars are in loss.csv anyway
        return None
    return SummaryWriter(log_dir=str(run.tensorboard))


# ---- previews and evaluation --------------------------------------------------------------------------
def _preview_specs(config: TrainConfig, model, lines, name, records, cache):
    from training.previews import PreviewSpec
    from training.templates import render

    if not config.preview_every:
        return []
    prompts = config.preview_prompts or [render(lines[0], name, records[0].caption if records else "")]
    some = next(iter(cache.entries.values())).mean
    width = config.preview_width or some.shape[-1] * model.vae_scale_factor
    height = config.preview_height or some.shape[-2] * model.vae_scale_factor
    return [PreviewSpec(p, config.preview_negative, s, config.preview_steps, config.preview_cfg, width, height,
                        config.preview_scheduler) for p in prompts for s in config.preview_seeds]


def _write_previews(job, model, emb: Embedding, specs, run: RunFolder, plan, step, config) -> None:
    from training.previews import render_preview

    for k, spec in enumerate(specs):
        path = run.previews / f"{snapshot_name(emb.name, step)}-{k}.png"
        try:
            render_preview(model, emb, spec, path, device=plan.device, dtype=plan.weight_dtype)
        except Exception as e:  # a failed preview must not end a long run
            job.warning(f"preview at step {step} failed: {e}")
            continue
        job.emit("preview", step=step, path=str(path), prompt=spec.prompt, seed=spec.seed)
    if config.save_png_embeddings and specs:
        try:
            from embeddings.formats import save_embedding

            png = run.image_embeddings / f"{snapshot_name(emb.name, step)}.png"
            first = run.previews / f"{snapshot_name(emb.name, step)}-0.png"
            save_embedding(emb.copy(name=snapshot_name(emb.name, step)), png, fmt="png",
                           preview=first if first.is_file() else None)
            job.emit("files", step=step, paths=[str(png)], what="png embedding")
        except Exception as e:
            job.warning(f"PNG embedding at step {step} failed: {e}")


def _build_evaluator(config, model, encoder, noise_scheduler, cache, records, lines, name, opts, plan):
    from training.dataset import PromptBuilder
    from training.evaluate import Evaluator

    count = min(config.eval_images, len(records))
    builder = PromptBuilder(lines, name, opts, random.Random(config.seed + 31337))
    prompts = [builder.build(records[i].caption) for i in range(count)]
    latents = [cache.entries[(i, False)].mean for i in range(count)]
    time_ids = None
    if model.family == "sdxl":
        time_ids = [torch.tensor([records[i].height, records[i].width, 0, 0,
                                  lat.shape[-2] * model.vae_scale_factor, lat.shape[-1] * model.vae_scale_factor],
                                 dtype=torch.float32, device=plan.device) for i, lat in enumerate(latents)]
    return Evaluator(model, encoder, noise_scheduler, latents, prompts, name, plan=plan, seed=config.seed,
                     added_time_ids=time_ids)


__all__ = ["TrainResult", "TrainingError", "train"]
