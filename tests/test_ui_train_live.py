"""The Train tab's live view without a browser: what one poll sends (only what changed), the
chart deltas across a resumed run, and the native resolution a model picks."""

from __future__ import annotations

import json

import gradio as gr

from embeddings.families import BUILTIN_MODELS, native_size
from jobs import events as ev
from jobs.registry import Job
from jobs.view import JobView, ViewCache, fold
from ui.train_tab import Sent, chart_delta, native_resolution, poll_outputs, status_markdown


def _step(s, done, total, value=1.0):
    return [ev.Loss(step=s, loss=value, lr=0.01, smoothed=value), ev.Norms(step=s, norms={"clip_l": [0.5]}),
            ev.Progress(done, total, step=s, it_s=2.0, eta_s=3.0)]


def test_a_poll_sends_only_new_points_and_unchanged_outputs_are_skipped():
    view, sent = JobView(title="t"), Sent()
    fold(view, [ev.State("running"), ev.Message("dataset x: 3 image(s)"), *_step(1, 1, 4), *_step(2, 2, 4)])
    status, bar, delta, previews, log, files = poll_outputs(view, "j", sent)
    delta = json.loads(delta)
    assert delta["reset"] and delta["loss"]["loss"] == [[1, 1.0], [2, 1.0]] and delta["norms"]["v0"][-1] == [2, 0.5]
    assert "step 2/4" in status and "dataset x" in log
    again = poll_outputs(view, "j", sent)
    assert all(isinstance(x, type(gr.skip())) for x in again)  # nothing new: nothing is sent
    fold(view, _step(3, 3, 4))
    status, bar, delta, previews, log, files = poll_outputs(view, "j", sent)
    assert json.loads(delta) == {"job": "j", "reset": False, "loss": {"loss": [[3, 1.0]], "smoothed": [[3, 1.0]]},
                                 "norms": {"v0": [[3, 0.5]]}}
    assert "step 3/4" in status and isinstance(log, type(gr.skip())) and isinstance(previews, type(gr.skip()))


def test_a_step_logged_again_resets_the_page_charts():
    """A run killed after step 3 and resumed from its bundle at 2 logs step 3 again."""
    view, sent = JobView(), Sent()
    fold(view, [*_step(1, 1, 4), *_step(2, 2, 4), *_step(3, 3, 4)])
    chart_delta(sent, "j", view.loss_series(), view.norm_series())
    fold(view, [ev.State("finished"), ev.State("running"), *_step(3, 1, 2, value=0.5)])
    delta = chart_delta(sent, "j", view.loss_series(), view.norm_series())
    assert delta["reset"] and delta["loss"]["loss"] == [[1, 1.0], [2, 1.0], [3, 0.5]]


def test_a_resumed_job_shows_one_timeline_from_its_run_log(tmp_path):
    log = tmp_path / "events.jsonl"
    first = Job(id="a", kind="train", title="first", log_path=log)
    for e in [ev.State("running"), *_step(1, 1, 2), *_step(2, 2, 2), ev.Preview(step=2, path="p2.png"),
              ev.Result({"stopped": "interrupted"}), ev.State("interrupted")]:
        first.emit(e)
    second = Job(id="b", kind="train", title="resume", log_path=log)
    for e in [ev.State("queued", ahead=0), ev.State("running"), *_step(3, 1, 2)]:
        second.emit(e)
    view = ViewCache(history=True).get(second)
    assert [e.step for e in view.losses] == [1, 2, 3] and [p.step for p in view.previews] == [2]
    assert view.end_step == 4 and view.fraction == 0.75 and "step 3/4" in status_markdown(view)
    assert [e.step for e in ViewCache().get(second).losses] == [3]  # without history: this job only


def test_nothing_to_train_says_why_in_the_status():
    view = JobView(title="t")
    fold(view, [ev.State("running"), ev.Message("nothing to train: x is already at step 10 and max steps is 10"),
                ev.Result({"stopped": "nothing to do", "reason": "nothing to train: x is already at step 10"}),
                ev.State("finished")])
    assert status_markdown(view).endswith("**Nothing trained:** nothing to train: x is already at step 10")


def test_phases_in_words():
    view = JobView(title="t")
    fold(view, [ev.State("running"), ev.Progress(0, 1, phase="loading")])
    assert view.activity() == "loading model" and "loading model" in status_markdown(view)
    fold(view, [ev.Progress(7, 7, phase="latents")])
    assert view.activity() == "caching latents 7/7" and view.fraction == 1.0
    fold(view, _step(2, 2, 10))
    assert view.activity() == "training" and view.fraction == 0.2
    fold(view, [ev.Progress(0, 2, step=2, phase="preview")])
    assert view.activity() == "preview 1/2 at step 2" and view.fraction == 0.2
    fold(view, [ev.Progress(2, 2, step=2, phase="preview")])
    assert view.activity() == "training"


def test_native_sizes(data):
    from ui.state import AppContext

    assert [native_size(n) for n in ("sd1", "sd2", "sdxl")] == [512, 768, 1024]
    ctx = AppContext(data=data)
    assert {name: native_resolution(ctx, name) for name in BUILTIN_MODELS} == {n: 64 for n in BUILTIN_MODELS}
    assert native_resolution(ctx, "no/such/model.safetensors") is None
