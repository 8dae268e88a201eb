"""Typed job events (jobs.events) and the one fold into a job's view (jobs.view).

`fixtures/events_v1.jsonl` is the events.jsonl of a real tiny run, recorded before the events were
typed: 8 steps with evaluations, previews, PNG embeddings and a not-learning warning, then resumed
in the same run folder to step 12. Logs like it must keep reading.
"""

import json
import threading
from pathlib import Path

import pytest

from jobs import events as ev
from jobs.events import Event, read_log
from jobs.registry import Job, JobRegistry, JobState
from jobs.view import JobView, ViewCache, fold, view_of

FIXTURE = Path(__file__).parent / "fixtures" / "events_v1.jsonl"


def test_todays_log_reads_as_typed_events_and_writes_back_the_same_lines():
    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    events = read_log(FIXTURE)
    assert len(events) == len(records) == 84
    assert not [e for e in events if isinstance(e.payload, ev.Unknown)]
    assert {e.kind for e in events} == {"state", "files", "message", "progress", "eval", "loss", "norms", "warning",
                                        "preview", "result"}
    for record, event in zip(records, events, strict=True):
        again = json.loads(event.to_json())
        # the same line, except that fields left at None are no longer written out
        assert again == {**record, "data": {k: v for k, v in record["data"].items() if v is not None}}
        assert Event.from_record(again).payload == event.payload
    loss = next(e.payload for e in events if e.kind == "loss")
    assert loss == ev.Loss(step=1, loss=0.9217469096183777, lr=0.02, smoothed=0.9217469096183777, epoch=0)
    norms = next(e.payload for e in events if e.kind == "norms")
    assert norms.norms == {"clip_l": (0.1456393003463745, 0.14051268994808197)}


def test_unknown_kinds_and_records_that_do_not_fit_are_kept_not_raised(tmp_path):
    log = tmp_path / "events.jsonl"
    lines = [{"seq": 0, "time": 1.0, "kind": "state", "data": {"state": "running", "someday": 1}},
             {"seq": 1, "time": 2.0, "kind": "layer_norms", "data": {"step": 3}},
             {"seq": 2, "time": 3.0, "kind": "loss", "data": {"step": 3}},
             {"seq": 3, "time": 4.0, "kind": "norms", "data": {"step": 3, "norms": 7}}]
    log.write_text("\n".join(json.dumps(r) for r in lines) + '\n{"seq": 4, "ti')  # and a torn last line
    events = read_log(log)
    assert [type(e.payload) for e in events] == [ev.State, ev.Unknown, ev.Unknown, ev.Unknown]
    assert events[0].payload == ev.State("running")  # the key it does not know is dropped
    assert events[1].kind == "layer_norms" and json.loads(events[1].to_json()) == lines[1]
    view = view_of(events)
    assert (view.state, view.losses, view.norms, view.seen) == ("running", [], [], 4)


def test_emit_takes_typed_events_and_the_old_keyword_form_through_the_same_types(tmp_path):
    job = Job(id="j", kind="train", title="t", log_path=tmp_path / "events.jsonl")
    job.emit(ev.Files(paths=[tmp_path / "a.pt"], what=ev.Files.SNAPSHOT, step=2))
    job.emit("loss", step=3, loss=0.5, lr=0.01, smoothed=0.6, epoch=0)
    job.progress(1, 4, phase="latents")
    job.warning("careful")
    assert [type(e.payload) for e in job.events()] == [ev.Files, ev.Loss, ev.Progress, ev.Warning]
    assert job.events(ev.Loss)[0].data == {"step": 3, "loss": 0.5, "lr": 0.01, "smoothed": 0.6, "epoch": 0}
    assert job.last(ev.Files).payload.paths == (str(tmp_path / "a.pt"),)
    assert [e.payload for e in read_log(job.log_path)] == [e.payload for e in job.events()]
    with pytest.raises(TypeError, match="unknown job event kind 'lose'"):
        job.emit("lose", step=1)
    with pytest.raises(TypeError, match="loss event: unexpected field.* smoothd"):
        job.emit("loss", step=1, loss=0.5, lr=0.01, smoothd=0.5)
    with pytest.raises(TypeError, match="missing"):
        job.emit("loss", step=1)
    with pytest.raises(TypeError):
        job.progress(1, 2, stepp=3)
    assert len(job.events()) == 4  # nothing half-written


def test_log_lines_are_in_seq_order_with_writers_on_several_threads(tmp_path):
    """The registry writes state events from its thread while the job writes its own."""
    job = Job(id="j", kind="t", title="t", log_path=tmp_path / "events.jsonl")

    def write(n):
        for i in range(150):
            job.message(f"{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [e.seq for e in read_log(job.log_path)] == list(range(600))


def test_registry_writes_state_result_and_error_as_typed_events():
    reg = JobRegistry()
    ok = reg.submit("x", "ok", lambda job: {"stopped": "finished"})
    bad = reg.submit("x", "bad", lambda job: 1 / 0)
    assert bad.wait(10) == JobState.FAILED and ok.state == JobState.FINISHED
    assert [e.payload for e in ok.events()] == [ev.State("queued", ahead=0), ev.State("running"),
                                                 ev.Result({"stopped": "finished"}), ev.State("finished")]
    view = view_of(bad.events(), bad.title)
    assert (view.state, view.error, view.error_type, view.ahead) == ("failed", "division by zero",
                                                                    "ZeroDivisionError", None)
    reg.shutdown()


# --- the fold -----------------------------------------------------------------------------------------
def test_fold_of_a_resumed_runs_log_follows_the_absolute_step():
    view = view_of(read_log(FIXTURE), "train flatcol")
    assert view.state == "finished" and view.done and view.stopped == "finished"
    assert view.result["step"] == 12 and view.result["steps_done"] == 4
    # progress counts this run's steps; the charts the absolute ones
    p = view.progress
    assert (p.done, p.total, p.step, p.phase, view.step, view.fraction) == (4, 4, 12, None, 12, 1.0)
    series = view.loss_series()
    assert [s for s, _ in series["loss"]] == list(range(1, 13)) == [s for s, _ in series["smoothed"]]
    assert [s for s, _ in series["eval"]] == [0, 4, 8, 12]
    assert set(view.norm_series()) == {"v0", "v1"} and len(view.norm_series()["v1"]) == 12
    assert [pr.step for pr in view.previews] == [4, 8, 12]
    by_what = view.files_by_what()
    assert by_what["final"] == ("/home/user/ti-data/runs/rec/final/flatcol.safetensors",
                                "/home/user/ti-data/embeddings/flatcol.safetensors")
    assert by_what["snapshot"][0].endswith("flatcol-000012.safetensors")
    assert view.run_folder == "/home/user/ti-data/runs/rec"
    assert view.messages[0].startswith("training finished at step 12") and view.messages[-1] == "loading base model tiny"
    assert [m for m in view.messages if m.startswith("training finished")][1].startswith("training finished at step 8")
    assert view.warnings == [n.text for n in view.notes if n.level == "warning"]
    assert len(view.warnings) == 1 and view.warnings[0].startswith("not learning")


def test_fold_is_incremental():
    events = read_log(FIXTURE)
    whole = view_of(events, "t")
    for cut in range(0, len(events) + 1, 5):
        view = fold(JobView(title="t"), events[:cut])
        assert fold(view, events[cut:]) == whole


def _loss(step, value=1.0):
    return ev.Loss(step=step, loss=value, lr=0.01, smoothed=value, epoch=0)


def test_a_run_resumed_after_a_kill_replaces_the_steps_logged_again_and_warnings_stay():
    """Killed after step 10 with its last bundle at 8: the resumed job logs 9 and 10 again."""
    first = [ev.State("queued", ahead=2), ev.State("running"), ev.Eval(0, 2.0)]
    for s in range(1, 11):
        first += [_loss(s), ev.Norms(s, {"clip_l": [1.0], "clip_g": [2.0]}), ev.Progress(s, 20, step=s)]
    first += [ev.Eval(8, 1.5), ev.Warning("skipped step 9: loss is nan"), ev.Eval(10, 1.4)]
    view = view_of(first)
    assert (view.state, view.ahead) == ("running", None)
    second = [ev.State("queued", ahead=0), ev.State("running"), ev.Message("resuming at step 8")]
    for s in range(9, 13):
        second += [_loss(s, 0.5), ev.Norms(s, {"clip_l": [3.0], "clip_g": [4.0]}), ev.Progress(s - 8, 4, step=s)]
    second += [ev.Warning("not learning"), ev.Eval(12, 1.0), ev.Result({"stopped": "finished"}),
               ev.State("finished")]
    fold(view, second)
    assert [(e.step, e.loss) for e in view.losses] == [(s, 1.0) for s in range(1, 9)] + [(s, 0.5) for s in range(9, 13)]
    norms = view.norm_series()
    assert set(norms) == {"clip_l[0]", "clip_g[0]"}
    assert norms["clip_g[0]"] == [(s, 2.0) for s in range(1, 9)] + [(s, 4.0) for s in range(9, 13)]
    assert [e.step for e in view.evals] == [0, 8, 12]  # the killed run's step-10 evaluation is gone
    assert view.warnings == ["not learning", "skipped step 9: loss is nan"]  # newest first, both kept
    assert (view.progress.done, view.progress.total, view.step, view.stopped) == (4, 4, 12, "finished")


def test_a_job_after_a_failed_one_starts_clean_and_a_queued_one_says_how_many_are_ahead():
    view = view_of([ev.State("running"), ev.Progress(3, 10, step=3), ev.Error("out of memory", "RuntimeError"),
                    ev.State("failed")])
    assert (view.state, view.error, view.fraction) == ("failed", "out of memory", 0.3)
    assert [n.level for n in view.notes] == ["error"]
    fold(view, [ev.State("queued", ahead=1)])
    assert (view.state, view.ahead, view.error, view.progress, view.result) == ("queued", 1, None, None, None)
    assert [n.text for n in view.notes] == ["out of memory"]  # the log of what happened stays


def test_view_cache_folds_only_what_is_new():
    job = Job(id="j", kind="train", title="train it")
    job.emit(ev.State("running"))
    job.emit(_loss(1))
    cache = ViewCache(keep=1)
    view = cache.get(job)
    assert (view.title, view.seen, len(view.losses)) == ("train it", 2, 1)
    job.emit(_loss(2))
    assert cache.get(job) is view and (view.seen, [e.step for e in view.losses]) == (3, [1, 2])
    other = Job(id="k", kind="train", title="other")
    assert cache.get(other) is not view and cache.get(job) is not view  # keep=1: the old view was let go
