"""CLIP scores of an embedding (the textual-inversion paper's two measures), live or for a whole run.

- **Likeness**: the mean CLIP image-image cosine similarity between images generated with the
  embedding (each likeness prompt × each seed) and the training images.
- **Editability**: the mean CLIP text-image cosine similarity between images generated from the
  edit prompts ("a painting of [name]", ...) and the same prompts with [name] replaced by the class
  word (or the embedding's init text).

Every image comes from fixed prompts and seeds, so the same vectors always get the same scores.
A score is cached in the run's `scores/` folder under a key made of the vectors, the score
settings, the CLIP and the base model, so evaluating a run a second time is instant, and a step
scored during training is not generated again by "Evaluate run". Scores go to `scores.csv`
beside `loss.csv` (the untrained embedding's row has `untrained` = 1: the baseline the best-step
rule compares editability with) and out as `jobs.events.Scores`.

Three callers: `score_live` (the trainer, every `score_every` steps), `evaluate_run` (every
snapshot of a finished run: "Evaluate run", `app.py evaluate`), and `auto_stop_due` (the
trainer's auto-stop, which reads the histories these write).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from embeddings.embedding import Embedding
from embeddings.formats import load_embedding
from embeddings.kinds import kind_of
from jobs import events
from jobs.registry import Job
from models.cache import get_model
from models.clip import ClipModel, ClipNotFound, load_clip
from preprocessing.images import open_image
from training.best_step import ScorePoint, Suggestion, auto_stop_reason, suggest_best
from training.config import TrainConfig
from training.dataset import scan_dataset
from training.device import choose_device, place
from training.errors import TrainingError
from training.outputs import SNAPSHOT_DIGITS
from training.previews import PreviewSpec, preview_image
from training.run_folder import RunFolder
from training.templates import render
from workspace.atomic import atomic_write_text
from workspace.datadir import DataDir, DatasetNotFoundError

MAX_REFERENCE_IMAGES = 64  # likeness compares with at most this many training images (the first, sorted)
SNAPSHOT_SUFFIX = re.compile(rf"-\d{{{SNAPSHOT_DIGITS}}}$")
SCORABLE_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class ScoreSettings:
    """How an embedding is scored: the prompts, seeds and sampler of every image generated."""

    score_prompts: tuple[str, ...]
    edit_prompts: tuple[str, ...]
    class_word: str
    seeds: tuple[int, ...]
    steps: int
    cfg: float
    width: int
    height: int
    scheduler: str
    negative: str = ""
    clip_skip: int = 1

    @classmethod
    def from_config(cls, config: TrainConfig, init_text: str = "") -> ScoreSettings:
        """The run's settings: previews' sampler, CFG, size (else the training resolution) and clip skip."""
        return cls(tuple(config.score_prompts), tuple(config.edit_prompts), config.class_word or init_text,
                   tuple(config.score_seeds), config.score_steps, config.preview_cfg,
                   config.preview_width or config.resolution, config.preview_height or config.resolution,
                   config.preview_scheduler, config.preview_negative, config.clip_skip)

    def images_per_score(self) -> int:
        return (len(self.score_prompts) + len(self.edit_prompts)) * len(self.seeds)

    def edit_text(self, prompt: str) -> str:
        """An edit prompt as CLIP reads it: [name] replaced by the class word (spaces tidied)."""
        return " ".join(render(prompt, self.class_word, "").split())

    def spec(self, prompt: str, name: str, seed: int) -> PreviewSpec:
        return PreviewSpec(render(prompt, name, ""), self.negative, seed, self.steps, self.cfg, self.width,
                           self.height, self.scheduler, self.clip_skip)


@dataclass(frozen=True)
class Scores:
    """One scored embedding. `untrained`: the run's starting embedding (the editability baseline)."""

    step: int
    likeness: float
    editability: float
    untrained: bool = False
    seconds: float = 0.0  # generation and CLIP time (0 when it came from the cache)
    cached: bool = False

    def row(self) -> dict[str, Any]:
        return {"step": self.step, "likeness": self.likeness, "editability": self.editability,
                "untrained": int(self.untrained)}

    def point(self) -> ScorePoint:
        return ScorePoint(self.step, self.likeness, self.editability)


class Scorer:
    """Scores embeddings for one base model, CLIP, set of training images and settings.

    The training images and the edit prompts' texts are encoded once; each `score` generates
    `settings.images_per_score()` images."""

    def __init__(self, model, clip: ClipModel, settings: ScoreSettings, reference_images: Sequence[Any], *,
                 device: torch.device, dtype: torch.dtype, cache: Path | None = None):
        if not reference_images:
            raise TrainingError("likeness needs the training images, and none could be read")
        self.model, self.clip, self.settings = model, clip, settings
        self.device, self.dtype, self.cache = device, dtype, cache
        self.reference = clip.encode_images(list(reference_images))
        self.edit_texts = clip.encode_texts([settings.edit_text(p) for p in settings.edit_prompts])
        fields = asdict(settings)
        if fields["clip_skip"] == 1:  # the key scores cached before clip skip was a setting still find
            del fields["clip_skip"]
        ident = json.dumps([fields, clip.info.identity(), model.short_hash, model.name])
        self._base_key = hashlib.sha256(ident.encode() + self.reference.numpy().tobytes()).hexdigest()

    def key(self, emb: Embedding) -> str:
        """The cache key: the vectors (not the name, which does not change the images) and the base key."""
        h = hashlib.sha256(self._base_key.encode() + str(emb.kind).encode())
        for tensors in (emb.vectors, emb.parts):  # parts: a per-layer kind's own sets
            for k in sorted(tensors):
                h.update(k.encode())
                h.update(tensors[k].detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:32]

    def images(self, emb: Embedding, should_stop: Callable[[], bool] | None = None) -> tuple[list, list]:
        """(likeness images, edit images), prompt by prompt, seed by seed."""
        s = self.settings

        def make(prompts: Sequence[str]) -> list:
            return [preview_image(self.model, emb, s.spec(p, emb.name, seed), device=self.device, dtype=self.dtype,
                                  should_stop=should_stop) for p in prompts for seed in s.seeds]

        return make(s.score_prompts), make(s.edit_prompts)

    def score(self, emb: Embedding, step: int | None = None, *, untrained: bool = False,
              should_stop: Callable[[], bool] | None = None) -> Scores:
        step = emb.step if step is None else step
        path = self.cache / f"{self.key(emb)}.json" if self.cache is not None else None
        if path is not None and path.is_file():
            try:
                got = json.loads(path.read_text(encoding="utf-8"))
                return Scores(step, float(got["likeness"]), float(got["editability"]), untrained, 0.0, cached=True)
            except (OSError, ValueError, KeyError):
                pass  # a broken cache entry is scored again and rewritten
        t0 = time.perf_counter()
        like_images, edit_images = self.images(emb, should_stop)
        likeness = float((self.clip.encode_images(like_images) @ self.reference.T).mean())
        n = len(self.settings.seeds)
        img = self.clip.encode_images(edit_images)  # prompt-major: rows i*n .. i*n+n-1 are prompt i
        editability = float((img * self.edit_texts.repeat_interleave(n, dim=0)).sum(-1).mean())
        out = Scores(step, likeness, editability, untrained, time.perf_counter() - t0)
        if path is not None:
            atomic_write_text(path, json.dumps({"likeness": likeness, "editability": editability}) + "\n")
        return out


def likeness_of(clip: ClipModel, images: Sequence[Any], reference_images: Sequence[Any]) -> float:
    """Likeness of given images to reference images (the measure `Scorer` uses), for tests and tools."""
    return float((clip.encode_images(list(images)) @ clip.encode_images(list(reference_images)).T).mean())


def reference_images(config: TrainConfig, data_dir: DataDir) -> list:
    """The run's training images (the first MAX_REFERENCE_IMAGES, sorted), upright RGB."""
    try:
        folder = data_dir.find_dataset(config.dataset)
    except DatasetNotFoundError as e:
        raise TrainingError(f"likeness needs the run's training images: {e}") from e
    records, _ = scan_dataset(folder, config.data_options())
    return [open_image(r.path).image for r in records[:MAX_REFERENCE_IMAGES]]


# ---- during training ----------------------------------------------------------------------------------
@dataclass
class LiveScoring:
    """The trainer's scorer, built at the first score step; `off` says why scores are skipped."""

    scorer: Scorer | None = None
    off: str = ""
    baseline_done: bool = False
    warned: set[str] = field(default_factory=set)


def score_live(st) -> None:
    """Score the live vectors at this step (training.trainer.RunState `st`, main process): the
    untrained embedding first (once per run folder), then this step. No CLIP: one warning, the
    run goes on (the eval loss still works)."""
    if st.scoring is None:
        st.scoring = _build_live(st)
    live: LiveScoring = st.scoring
    if live.scorer is None:
        return
    stop = lambda: st.job.stop_requested  # noqa: E731
    if not live.baseline_done:
        live.baseline_done = True
        if not any(r.get("untrained") for r in st.run.read_scores()):
            init = kind_of(st.emb).rebuild(st.emb, st.init_vectors, step=st.origin, metadata=dict(st.emb.metadata))
            _record(st, live.scorer.score(init, st.origin, untrained=True, should_stop=stop))
    _record(st, live.scorer.score(st.live_embedding(st.step), st.step, should_stop=stop))


def _build_live(st) -> LiveScoring:
    config = st.config
    try:
        clip = load_clip(config.clip_model, st.data_dir, base_model=config.model, device=st.ctx.plan.device)
        settings = ScoreSettings.from_config(config, str(st.emb.metadata.get("init_text", "")))
        scorer = Scorer(st.model, clip, settings, reference_images(config, st.data_dir), device=st.ctx.plan.device,
                        dtype=st.ctx.plan.weight_dtype, cache=st.run.score_cache)
    except (ClipNotFound, TrainingError) as e:
        st.warn(f"CLIP scores are off for this run: {e}")
        return LiveScoring(off=str(e))
    st.say(f"CLIP scores every {config.score_every} steps with {clip.name}: "
           f"{settings.images_per_score()} image(s) each")
    return LiveScoring(scorer)


def _record(st, s: Scores) -> None:
    st.append_log(st.run.scores_csv, st.run.append_scores, s.row())
    st.job.emit(events.Scores(step=s.step, likeness=s.likeness, editability=s.editability,
                              untrained=s.untrained or None))
    if st.writer is not None and not s.untrained:
        st.writer.add_scalar("clip/likeness", s.likeness, s.step)
        st.writer.add_scalar("clip/editability", s.editability, s.step)


def auto_stop_due(st) -> str:
    """Why the run auto-stops after this step ("" to go on): the chosen score's history in this
    part of the run (a resumed run counts afresh from where it resumed) through
    `best_step.auto_stop_reason`. Read only on steps that evaluated. With several processes
    auto-stop is off (the others could not hear of it), said once."""
    config, step = st.config, st.step
    score = config.auto_stop
    every = config.eval_every if score == "eval_loss" else config.score_every
    if score == "off" or not every or step % every:
        return ""
    if st.dist.world > 1:
        if st.scoring is None or "dist" not in st.scoring.warned:
            st.scoring = st.scoring or LiveScoring(off="")
            st.scoring.warned.add("dist")
            st.warn("auto-stop is off when training on several processes")
        return ""
    if score == "eval_loss":
        history = [(r["step"], r["eval_loss"]) for r in st.run.read_eval() if r["step"] > st.start]
    else:
        history = [(r["step"], r[score]) for r in st.run.read_scores() if not r.get("untrained") and r["step"] > st.start]
    return auto_stop_reason(history, config.auto_stop_patience, score) or ""


# ---- after training: every snapshot of a run --------------------------------------------------------
@dataclass
class RunScores:
    """A run's scores by step (the untrained one first), the eval loss it logged, the suggestion."""

    scores: list[Scores]
    eval_loss: list[tuple[int, float]]
    suggestion: Suggestion
    threshold: float

    @property
    def baseline(self) -> Scores | None:
        return next((s for s in self.scores if s.untrained), None)

    @property
    def trained(self) -> list[Scores]:
        return [s for s in self.scores if not s.untrained]

    def to_dict(self) -> dict[str, Any]:
        return {"scores": [asdict(s) for s in self.scores], "eval_loss": self.eval_loss,
                "suggested_step": self.suggestion.step, "suggestion": self.suggestion.words,
                "threshold": self.threshold}


def run_scores(run: RunFolder, threshold: float | None = None) -> RunScores:
    """What the run folder holds now (scores.csv, eval.csv) and the suggestion: no models loaded."""
    if threshold is None:
        try:
            threshold = TrainConfig.load(run.settings_path).best_threshold
        except (OSError, ValueError):
            threshold = TrainConfig.best_threshold
    by_step: dict[tuple[int, bool], Scores] = {}
    for r in run.read_scores():
        s = Scores(int(r["step"]), r["likeness"], r["editability"], bool(r.get("untrained")))
        by_step[(s.step, s.untrained)] = s  # a step scored again (a resumed run) keeps the latest
    scores = sorted(by_step.values(), key=lambda s: (not s.untrained, s.step))
    base = next((s for s in scores if s.untrained), None)
    suggestion = suggest_best([s.point() for s in scores if not s.untrained],
                              base.editability if base else None, threshold)
    evals = [(int(r["step"]), r["eval_loss"]) for r in run.read_eval()]
    return RunScores(scores, evals, suggestion, threshold)


def run_embeddings(run: RunFolder) -> list[tuple[Embedding, bool]]:
    """(embedding, untrained) for the run's starting embedding (original/) and every snapshot,
    one per step (several formats of one step are one snapshot), in step order."""
    out: list[tuple[Embedding, bool]] = []
    originals = sorted(p for p in run.original.glob("*") if p.suffix in SCORABLE_SUFFIXES) if run.original.is_dir() else []
    if originals:
        out.append((load_embedding(originals[0]), True))
    seen: set[int] = set()
    for path in sorted(run.snapshot_files(), key=lambda p: (p.suffix != ".safetensors", p.name)):
        if path.suffix not in SCORABLE_SUFFIXES:
            continue
        emb = load_embedding(path)
        if emb.step in seen:
            continue
        seen.add(emb.step)
        out.append((emb, False))
    return sorted(out, key=lambda e: (not e[1], e[0].step))


def base_name(emb: Embedding) -> str:
    """A snapshot's embedding name without its `-000500` step (the images do not depend on it)."""
    return SNAPSHOT_SUFFIX.sub("", emb.name)


def evaluate_run(run: RunFolder, data_dir: DataDir, job: Job | None = None, *,
                 overrides: dict[str, Any] | None = None, model=None, clip: ClipModel | None = None) -> RunScores:
    """Score the untrained embedding and every snapshot of `run` (cached ones are instant),
    rewrite scores.csv, emit one Scores event per step, and return the run's scores with the
    suggestion. `overrides`: score settings to change (clip_model, prompts, seeds, ...), saved in
    no file; the cache key changes with them."""
    job = job or Job(id="local", kind="evaluate", title=f"evaluate {run.name}")
    try:
        config = TrainConfig.load(run.settings_path)
    except (OSError, ValueError) as e:
        raise TrainingError(f"{run.path}: not a run folder ({e})") from e
    if overrides:
        config = config.replace(**overrides)
    todo = run_embeddings(run)
    if not todo:
        raise TrainingError(f"{run.path}: no snapshots to evaluate (save_every was 0 and the run never finished)")
    plan = choose_device(config.mixed_precision)
    if model is None:
        job.progress(0, 1, phase="loading")
        model = get_model(config.model, data_dir)
    clip = clip or load_clip(config.clip_model, data_dir, base_model=config.model, device=plan.device)
    init_text = next((str(e.metadata.get("init_text", "")) for e, u in todo if u), "") or \
        str(todo[0][0].metadata.get("init_text", ""))
    settings = ScoreSettings.from_config(config, init_text)
    place(model, plan)
    scorer = Scorer(model, clip, settings, reference_images(config, data_dir), device=plan.device,
                    dtype=plan.weight_dtype, cache=run.score_cache)
    job.message(f"evaluating {len(todo)} embedding(s) of {run.name} with {clip.name}: "
                f"{settings.images_per_score()} image(s) each unless cached")
    done: list[Scores] = []
    for i, (emb, untrained) in enumerate(todo):
        if job.stop_requested:
            job.message("evaluation stopped on request; the steps scored so far are kept")
            break
        job.progress(i, len(todo), step=emb.step, phase="scores")
        s = scorer.score(emb.copy(name=base_name(emb)), emb.step, untrained=untrained,
                         should_stop=lambda: job.stop_requested)
        done.append(s)
        job.emit(events.Scores(step=s.step, likeness=s.likeness, editability=s.editability,
                               untrained=s.untrained or None))
    job.progress(len(done), len(todo), phase="scores")
    _merge_csv(run, done)
    result = run_scores(run, config.best_threshold)
    fresh = {(s.step, s.untrained): s for s in done}  # with their time and cache flag
    result.scores = [fresh.get((s.step, s.untrained), s) for s in result.scores]
    job.message(f"suggested: {result.suggestion.words}")
    return result


def _merge_csv(run: RunFolder, new: list[Scores]) -> None:
    """scores.csv = the rows it had (steps scored live between snapshots) with these steps replaced."""
    replaced = {(s.step, s.untrained) for s in new}
    rows = [r for r in run.read_scores() if (int(r["step"]), bool(r.get("untrained"))) not in replaced]
    rows += [s.row() for s in new]
    rows.sort(key=lambda r: (not r["untrained"], int(r["step"])))
    run.write_scores([{**r, "step": int(r["step"]), "untrained": int(r["untrained"])} for r in rows])
