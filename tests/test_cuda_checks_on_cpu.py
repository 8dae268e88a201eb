"""The checks of the `cuda` tests, run on the CPU: they need no GPU to be proven checks.

torch has a CPU GradScaler, so the trainer's scaler branch (unscale before the health check and
the clip, skip on overflow, lower the scale) runs here too, on the tiny model in fp32. These
tests are not marked `cuda`: they run everywhere, and a check that could not fail would show here.
"""

from __future__ import annotations

import pytest
import torch

from models.load import load_base_model
from training.device import choose_device
from training.trainer import OutcomeKind, guarded_step

pytest_plugins = ["train_fixtures"]

CPU = choose_device("no", "cpu")


def _cpu_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**16)


def test_overflow_skips_the_step_lowers_the_scale_keeps_the_vectors(data, solid_dataset):
    from cuda_checks import check_overflow_skipped, overflow_step, overflowing_gradients, prepared, vectors_copy
    from train_fixtures import make_embedding, tiny_config

    model = load_base_model("tiny", data)
    make_embedding(model, data)
    st = prepared(tiny_config(data, solid_dataset, lr_kind="constant", max_steps=4), model, data, CPU)
    st.scaler = _cpu_scaler()
    assert guarded_step(st).kind == OutcomeKind.STEPPED  # a normal step first: optimizer state exists
    result = overflow_step(st, overflowing_gradients)
    check_overflow_skipped(result)
    assert result.scale_after == 2.0**15
    before = vectors_copy(st)
    assert guarded_step(st).kind == OutcomeKind.STEPPED and st.step == 2  # and training goes on
    assert not torch.equal(before["clip_l"], st.vectors["clip_l"])


def test_overflow_check_fails_when_a_step_was_taken(data, solid_dataset):
    """The check itself: a step that was not an overflow does not pass it."""
    from cuda_checks import check_overflow_skipped, overflow_step, prepared
    from train_fixtures import make_embedding, tiny_config

    model = load_base_model("tiny", data)
    make_embedding(model, data)
    st = prepared(tiny_config(data, solid_dataset, lr_kind="constant", max_steps=4), model, data, CPU)
    st.scaler = _cpu_scaler()
    guarded_step(st)
    result = overflow_step(st, lambda _st: None)  # nothing injected
    with pytest.raises(AssertionError):
        check_overflow_skipped(result)


@pytest.mark.parametrize("clip_mode", ["none", "norm", "value"])
def test_clipping_sees_unscaled_gradients(data, solid_dataset, clip_mode):
    from cuda_checks import check_clip_saw_unscaled, first_step_grads
    from train_fixtures import make_embedding, tiny_config

    make_embedding(load_base_model("tiny", data), data)
    _, raw, _ = first_step_grads(tiny_config(data, solid_dataset, run_name="raw"), load_base_model("tiny", data),
                                 data, CPU)
    clip = 0.25 * float(raw.norm() if clip_mode == "norm" else raw.abs().max())
    cfg = dict(clip_mode=clip_mode, clip_value=repr(clip))
    _, ref, _ = first_step_grads(tiny_config(data, solid_dataset, run_name="ref", **cfg),
                                 load_base_model("tiny", data), data, CPU)
    _, scaled, st = first_step_grads(tiny_config(data, solid_dataset, run_name="scaled", **cfg),
                                     load_base_model("tiny", data), data, CPU, scaler=_cpu_scaler())
    assert st.scaler.get_scale() == 2.0**16  # the scaler really scaled (no overflow, no backoff)
    check_clip_saw_unscaled(ref, scaled, clip_mode, clip, rel=1e-5)
    if clip_mode != "none":  # the check tells clipped-before-unscaling apart
        with pytest.raises(AssertionError):
            check_clip_saw_unscaled(ref, scaled / 2.0**16, clip_mode, clip, rel=1e-5)
