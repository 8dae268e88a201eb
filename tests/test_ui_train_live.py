"""The Train tab's live view without a browser: what one poll of the page sends (only what changed,
against the cursor the page hands back), the chart deltas across a resumed run, the poll endpoint
behind the login, and the native resolution a model picks."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import gradio as gr
import pytest

from embeddings.families import BUILTIN_MODELS, native_size
from jobs import events as ev
from jobs.registry import Job
from jobs.view import JobView, ViewCache, fold
from ui.train_tab import (
    GALLERY_PREVIEWS,
    Sent,
    chart_columns,
    chart_delta,
    file_outputs,
    live_update,
    loss_points,
    native_resolution,
    preview_items,
    status_html,
    status_markdown,
)


def _step(s, done, total, value=1.0):
    return [ev.Loss(step=s, loss=value, lr=0.01, smoothed=value), ev.Norms(step=s, norms={"clip_l": [0.5]}),
            ev.Progress(done, total, step=s, it_s=2.0, eta_s=3.0)]


def test_a_poll_sends_only_what_changed_and_the_cursor_travels_through_the_page():
    view = JobView(title="t")
    fold(view, [ev.State("running"), ev.Message("dataset x: 3 image(s)"), *_step(1, 1, 4), *_step(2, 2, 4)])
    sent = Sent.from_text("")  # a new page
    out = live_update(view, "j", sent)
    assert set(out) == {"charts", "status", "bar", "log", "refresh"}  # everything; no heat map for this run
    assert out["charts"]["reset"] and out["charts"]["loss"]["loss"] == [[1, 1.0], [2, 1.0]]
    assert out["charts"]["norms"]["v0"][-1] == [2, 0.5]
    assert "step 2/4" in out["status"] and "dataset x" in out["log"] and "width:50.0%" in out["bar"]
    cursor = sent.to_text()
    assert live_update(view, "j", Sent.from_text(cursor)) == {}  # nothing new: nothing is sent
    fold(view, _step(3, 3, 4))
    sent = Sent.from_text(cursor)
    out = live_update(view, "j", sent)
    assert set(out) == {"charts", "status", "bar"}
    assert out["charts"] == {"job": "j", "reset": False, "loss": {"loss": [[3, 1.0]], "smoothed": [[3, 1.0]]},
                             "norms": {"v0": [[3, 0.5]]}}
    assert "step 3/4" in out["status"]
    fold(view, [ev.Preview(step=3, path="p3.png", prompt="a cat"), ev.Message("saved")])
    out = live_update(view, "j", sent)
    assert out["refresh"] is True and out["log"].index("saved") < out["log"].index("dataset x")  # newest first
    files = Sent()  # the tab's server-side State for the gallery and downloads
    gallery, downloads = file_outputs(view, "j", files)
    assert gallery == [("p3.png", "step 3 · a cat")] and downloads is None
    assert all(isinstance(x, type(gr.skip())) for x in file_outputs(view, "j", files))  # shown already
    assert file_outputs(view, "k", files)[0] == [("p3.png", "step 3 · a cat")]  # another job: sent again


def test_the_chart_columns_are_the_views_series():
    """The poll reads chart points straight from the event lists (so it costs the new points
    only); what it reads must be the view's own series, names included."""
    view = JobView()
    for s, value in ((1, 1.0), (2, 0.9)):
        fold(view, [ev.Loss(step=s, loss=value, lr=0.01, smoothed=value), ev.Eval(s, value - 0.1),
                    ev.Norms(step=s, norms={"clip_l": [0.5 * s], "clip_g": [0.1 * s, 0.2 * s]})])
    loss, norms = chart_columns(view)
    assert {k: list(c) for k, c in loss.items()} == loss_points(view) and set(loss) == {"loss", "smoothed", "eval"}
    assert {k: list(c) for k, c in norms.items()} == view.norm_series()
    assert norms["clip_g[1]"][1:] == [(2, 0.4)] and len(norms["clip_l[0]"]) == 2
    assert chart_columns(None) == ({}, {})
    single = fold(JobView(), _step(1, 1, 2))
    assert {k: list(c) for k, c in chart_columns(single)[1].items()} == single.norm_series() == {"v0": [(1, 0.5)]}


def test_the_status_line_is_escaped_html_with_its_bold_marks():
    assert status_html("**run <1>** — failed\n\n**Failed:** a_b *c*") == (
        "<p><strong>run &lt;1&gt;</strong> — failed</p><p><strong>Failed:</strong> a_b *c*</p>")


def test_a_cursor_with_a_nan_point_does_not_reset_the_charts_every_poll():
    view = JobView()
    fold(view, [*_step(1, 1, 4), *_step(2, 2, 4, value=float("nan"))])
    sent = Sent()
    assert live_update(view, "j", sent)["charts"]["loss"]["loss"] == [[1, 1.0], [2, None]]
    assert "charts" not in live_update(view, "j", Sent.from_text(sent.to_text()))
    assert Sent.from_text("not json") == Sent() and Sent.from_text('{"points": 3}') == Sent()


def test_the_poll_endpoint_answers_the_page_and_only_behind_the_login(data):
    from tests.ui_fixtures import running_app

    with running_app(data, auth="u:secret") as app:
        req = urllib.request.Request(f"{app.url}/gradio_api/run/train_live", data=json.dumps({"data": [""]}).encode(),
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code in (401, 403)
        answer = json.loads(app.client(auth=("u", "secret")).predict("", api_name="/train_live"))
        assert answer["status"] == "<p>No training run yet.</p>" and Sent.from_text(answer["cursor"]).status != -1


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


def test_the_gallery_keeps_the_first_round_beside_the_latest():
    view = JobView()
    fold(view, [ev.Preview(step=s, path=f"p{s}-{k}.png", prompt="a", seed=k) for s in range(0, 1000, 100)
                for k in range(4)])
    items = preview_items(view)
    assert len(items) == GALLERY_PREVIEWS
    assert [path for path, _ in items[:4]] == [f"p0-{k}.png" for k in range(4)]  # what training started from
    assert [path for path, _ in items[4:]] == [f"p{s}-{k}.png" for s in range(500, 1000, 100) for k in range(4)]
    assert items[5][1] == "step 500 · seed 1 · a"
    few = JobView()
    fold(few, [ev.Preview(step=s, path=f"q{s}.png") for s in (10, 20)])
    assert preview_items(few) == [("q10.png", "step 10"), ("q20.png", "step 20")]
