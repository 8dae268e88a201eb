"""The job registry: one worker in order, events by cursor, states, and a log that never tears."""

import json
import subprocess
import sys
import textwrap
import threading

from jobs.registry import JobInterrupted, JobRegistry, JobState


def test_jobs_run_one_at_a_time_in_order_and_readers_follow_by_cursor():
    reg = JobRegistry()
    gate = threading.Event()
    order = []

    def first(job):
        order.append("first-start")
        gate.wait(10)
        job.progress(1, 1)
        order.append("first-end")
        return {"n": 1}

    def second(job):
        order.append("second")
        return {"n": 2}

    a = reg.submit("train", "a", first)
    b = reg.submit("train", "b", second)
    assert b.events("state")[0].data == {"state": "queued", "ahead": 1}
    assert b.state == JobState.QUEUED
    gate.set()
    assert b.wait(20) == JobState.FINISHED and a.state == JobState.FINISHED
    assert order == ["first-start", "first-end", "second"]
    evs, cursor = a.events_since(0)
    assert [e.kind for e in evs] == ["state", "state", "progress", "result", "state"]
    assert [e.seq for e in evs] == list(range(len(evs)))
    more, cursor2 = a.events_since(cursor)
    assert more == [] and cursor2 == cursor
    assert a.result == {"n": 1} and reg.latest("train") is b
    reg.shutdown()


def test_failure_and_interrupt_states():
    reg = JobRegistry()
    gate = threading.Event()

    def boom(job):
        raise ValueError("bad schedule '0.01:0'")

    def stoppable(job):
        gate.set()
        while True:
            job.check_stop()

    f = reg.submit("x", "fails", boom)
    assert f.wait(10) == JobState.FAILED
    assert f.error == "bad schedule '0.01:0'" and f.last("error").data["type"] == "ValueError"
    s = reg.submit("x", "stops", stoppable)
    queued = reg.submit("x", "never runs", lambda job: "ran")
    assert gate.wait(10)
    queued.request_stop()
    s.request_stop()
    assert s.wait(10) == JobState.INTERRUPTED
    assert queued.wait(10) == JobState.INTERRUPTED and queued.result is None
    assert issubclass(JobInterrupted, Exception)
    reg.shutdown()


def test_event_log_on_a_full_disk_keeps_whole_lines(tmp_path):
    """Under a real file-size limit, appends that do not fit are cut back: no torn JSON line."""
    log = tmp_path / "events.jsonl"
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(__import__('pathlib').Path(__file__).resolve().parents[1])!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        from pathlib import Path
        from jobs.registry import Job
        resource.setrlimit(resource.RLIMIT_FSIZE, (400, resource.RLIM_INFINITY))
        job = Job(id="j", kind="t", title="t", log_path=Path({str(log)!r}))
        for i in range(20):
            job.message(f"{{i:02d}}" + "x" * 30)
        print(len(job.events()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "20"  # the in-memory log has every event
    lines = log.read_text().splitlines()
    assert 0 < len(lines) < 20 and log.stat().st_size <= 400
    assert [int(json.loads(line)["data"]["text"][:2]) for line in lines] == list(range(len(lines)))
    assert "cannot append" in out.stderr
