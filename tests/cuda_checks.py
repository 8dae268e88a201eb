"""What the `cuda` tests check, written once so the same checks also run on a CPU.

The CUDA tests (tests/test_cuda_*.py, marked `cuda`) need a GPU; without one they are skipped
with the reason. The checks that do not depend on CUDA itself (a GradScaler overflow skips the
step, clipping sees unscaled gradients, peak memory read around one step) live here as plain
functions over a prepared `RunState`, so tests/test_cuda_checks_on_cpu.py runs them on the CPU
(with torch's CPU GradScaler) and a broken check is caught without a GPU.

Everything goes through the trainer's own steps: `prepare()` builds the run exactly as `train()`
does, `guarded_step()` is the optimizer step with its guards. An overflow is injected with a
gradient hook on the trainable vectors or by raising the scaler's scale; nothing is patched.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from jobs.registry import Job
from training.config import TrainConfig
from training.device import DevicePlan, choose_device
from training.distributed import DistContext
from training.trainer import Outcome, OutcomeKind, RunState, guarded_step, prepare
from workspace.datadir import DataDir

# cuBLAS is deterministic only with a fixed workspace, set before its first use in the process
# (module import happens at collection, before any test runs); the exact-resume test needs it.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

CUDA_REASON = "needs a CUDA GPU (torch.cuda.is_available() is false here)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
CUDA = [pytest.mark.cuda, needs_cuda]  # pytestmark of every tests/test_cuda_*.py that needs a GPU


def bf16_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def cuda_plan(precision: str) -> DevicePlan:
    """The plan `train()` makes for `mixed_precision=precision` on the first GPU."""
    return choose_device(precision, "cuda")


def prepared(config: TrainConfig, model, data: DataDir, plan: DevicePlan, name: str = "t") -> RunState:
    """A run after `prepare()` (model placed, latents cached, vectors and optimizer made)."""
    config.validate()
    st = prepare(config, model, data, Job(id=name, kind="train", title=name), run=None, resume=False, plan=plan,
                 dist=DistContext.single())
    assert isinstance(st, RunState), f"prepare() had nothing to do: {st}"
    return st


def vectors_copy(st: RunState) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in st.vectors.items()}


def grads(st: RunState) -> torch.Tensor:
    """Every vector's gradient after a step, flattened into one fp32 tensor (what clipping saw,
    after any clipping): `guarded_step` leaves the unscaled, clipped gradients in `.grad`."""
    return torch.cat([v.grad.detach().float().flatten() for v in st.vectors.values()])


@contextmanager
def overflowing_gradients(st: RunState) -> Iterator[None]:
    """Every backward pass inside produces an infinite gradient on the vectors, as an fp16 overflow
    does: the hook multiplies the gradient arriving at each vector by inf (the hook's result is
    what accumulates into `.grad`)."""
    handles = [v.register_hook(lambda g: g * math.inf) for v in st.vectors.values()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def raise_scale(st: RunState, scale: float = 2.0**100) -> None:
    """Set the scaler's scale so high that the scaled loss overflows fp16 in the backward pass
    (the natural way an fp16 overflow happens). The scaler must have scaled once already."""
    assert st.scaler is not None, "no GradScaler in this run (not fp16)"
    st.scaler.update(scale)


@dataclass(frozen=True)
class OverflowResult:
    outcome: Outcome
    scale_before: float
    scale_after: float
    step_before: int
    step_after: int
    vectors_unchanged: bool
    optimizer_steps_before: int
    optimizer_steps_after: int


def _adam_steps(st: RunState) -> int:
    steps = [float(s["step"]) for s in st.optimizer.state.values() if "step" in s]
    return int(max(steps)) if steps else 0


def overflow_step(st: RunState, inject: Callable[[RunState], object]) -> OverflowResult:
    """One `guarded_step` with an overflow injected by `inject(st)` (a context manager such as
    `overflowing_gradients`, or a plain call such as `raise_scale`), and what it changed."""
    before = vectors_copy(st)
    step_before, adam_before = st.step, _adam_steps(st)
    injected = inject(st)  # may set the scale itself: read it after
    scale_before = st.scaler.get_scale()
    if hasattr(injected, "__enter__"):
        with injected:
            outcome = guarded_step(st)
    else:
        outcome = guarded_step(st)
    same = all(torch.equal(before[k], v.detach()) for k, v in st.vectors.items())
    return OverflowResult(outcome, scale_before, st.scaler.get_scale(), step_before, st.step, same, adam_before,
                          _adam_steps(st))


def check_overflow_skipped(r: OverflowResult) -> None:
    """What an fp16 overflow must do: the step is skipped (not counted, the optimizer does not
    step), the scale is lowered by the backoff factor, the vectors stay exactly as they were."""
    assert r.outcome.kind == OutcomeKind.SKIPPED, r
    assert math.isfinite(r.outcome.loss), r  # the loss was fine: only the gradients overflowed
    assert r.step_after == r.step_before, r
    assert r.optimizer_steps_after == r.optimizer_steps_before, r
    assert r.scale_after == pytest.approx(r.scale_before * 0.5), r  # GradScaler's default backoff
    assert r.vectors_unchanged, r


def step_peak_bytes(st: RunState) -> tuple[Outcome, int]:
    """One `guarded_step` and the most GPU memory allocated during it above what was allocated
    just before (activations, gradients, optimizer state): weights are not counted."""
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    outcome = guarded_step(st)
    torch.cuda.synchronize()
    return outcome, torch.cuda.max_memory_allocated() - base


def module_devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


@contextmanager
def record_calls(module: torch.nn.Module, seen: list, what: Callable[[], object]) -> Iterator[list]:
    """Append `what()` to `seen` each time `module` runs (a forward pre-hook)."""
    handle = module.register_forward_pre_hook(lambda *_: seen.append(what()))
    try:
        yield seen
    finally:
        handle.remove()


def image_is_picture(path: Path, size: tuple[int, int]) -> None:
    """A PNG of `size` that is not one flat colour (a NaN decode comes out black)."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.size == size, (path, im.size)
        lo, hi = zip(*im.convert("RGB").getextrema(), strict=True)
        assert max(hi) > min(lo), f"{path}: a flat image (a NaN or zero decode?)"


def first_step_grads(config: TrainConfig, model, data: DataDir, plan: DevicePlan, *,
                     scaler: torch.amp.GradScaler | None = None) -> tuple[Outcome, torch.Tensor, RunState]:
    """One step of a fresh run and the gradients the optimizer got (unscaled, then clipped).
    `scaler` replaces the run's own (the CPU test gives a CPU GradScaler: prepare() makes one
    only for fp16 on CUDA)."""
    st = prepared(config, model, data, plan)
    if scaler is not None:
        st.scaler = scaler
    outcome = guarded_step(st)
    assert outcome.kind == OutcomeKind.STEPPED, outcome
    return outcome, grads(st), st


def check_clip_saw_unscaled(reference: torch.Tensor, scaled: torch.Tensor, clip_mode: str, clip: float,
                            rel: float) -> None:
    """`reference`: gradients of a run without a scaler; `scaled`: the same step with a GradScaler.
    Unclipped (clip_mode none) they agree within `rel`; clipped, both end at the clip bound. Had
    the trainer clipped the scaled gradients, the scaled run would end at bound / scale instead."""
    if clip_mode == "none":
        assert float((scaled - reference).norm()) <= rel * float(reference.norm()), (scaled.norm(), reference.norm())
        return
    size = (lambda g: float(g.norm())) if clip_mode == "norm" else (lambda g: float(g.abs().max()))
    for g in (reference, scaled):
        assert size(g) == pytest.approx(clip, rel=max(rel, 1e-4)), (clip_mode, size(g), clip)
