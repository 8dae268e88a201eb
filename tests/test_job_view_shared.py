"""The Train tab and `python app.py train` present the same folded view of a job's events.

The recorded log (fixtures/events_v1.jsonl: 8 steps, then resumed to 12) is replayed into a job
and read the way each reader reads a live one: the CLI's `follow` (fold one event at a time, print
what it added) and the Train tab's poll (a ViewCache, then `live_view`). Both must agree with the
one view `view_of` folds from the log, and print/draw what they did before the events were typed.
"""

import html
import re
from pathlib import Path

from cli.train_cmd import follow
from jobs.events import read_log
from jobs.registry import Job, JobState
from jobs.view import ViewCache, view_of
from ui.train_tab import live_view, status_markdown

FIXTURE = Path(__file__).parent / "fixtures" / "events_v1.jsonl"
RUN = "/home/user/ti-data/runs/rec"
PRINTED = [
    "loading base model tiny",
    "embedding flatcol: 2 vector(s), stored step 0, from /home/user/ti-data/embeddings/flatcol.safetensors",
    "dataset /home/user/ti-data/datasets/solid: 4 image(s); template subject_filewords (26 line(s))",
    "device cpu fp32; model tiny [sd1] (random weights, for trying the workflow)",
    "cached 4 latent(s) (deterministic) in 0.0s",
    "step 0: eval loss 1.09122",
    "training steps 0 -> 8 (8 step(s)), batch 1 x 1",
    "warning: not learning: after 2 steps the vectors moved only 1.95e+00 (relative); raise the learning rate or "
    "check that prompts contain 'flatcol'",
    "step 4: eval loss 1.08624",
    f"preview: {RUN}/previews/flatcol-000004-0.png",
    "step 8: eval loss 1.08618",
    f"preview: {RUN}/previews/flatcol-000008-0.png",
    "training finished at step 8; embedding saved to /home/user/ti-data/embeddings/flatcol.safetensors",
    "loading base model tiny",
    "resuming flatcol at step 8 from resume.pt (optimizer and RNG restored)",
    "dataset /home/user/ti-data/datasets/solid: 4 image(s); template subject_filewords (26 line(s))",
    "device cpu fp32; model tiny [sd1] (random weights, for trying the workflow)",
    "cached 4 latent(s) (deterministic) in 0.0s",
    "training steps 8 -> 12 (4 step(s)), batch 1 x 1",
    "step 10: loss 1.0242 (smoothed 1.0314) lr 0.02",
    "step 12: eval loss 1.08602",
    f"preview: {RUN}/previews/flatcol-000012-0.png",
    "training finished at step 12; embedding saved to /home/user/ti-data/embeddings/flatcol.safetensors",
    f"run folder: {RUN}",
]


def _replayed() -> Job:
    """A finished job whose log is the recorded one, as both readers see a live job."""
    job = Job(id="train-1", kind="train", title="train flatcol")
    for event in read_log(FIXTURE):
        job.emit(event.payload)
    job.state = JobState.FINISHED
    return job


def test_cli_and_train_tab_show_one_view_of_a_recorded_log(capsys):
    view = view_of(read_log(FIXTURE), "train flatcol")

    assert follow(_replayed(), bar=False) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == PRINTED
    # every printed line is a part of the view
    assert [line for line in printed if "eval loss" in line] == [f"step {e.step}: eval loss {e.loss:.5f}"
                                                                 for e in view.evals]
    assert [line.removeprefix("warning: ") for line in printed if line.startswith("warning: ")] == view.warnings[::-1]
    assert [line.removeprefix("preview: ") for line in printed if line.startswith("preview: ")] == [
        p.path for p in view.previews]
    assert [line for line in printed if not re.match(r"(step \d+:|warning:|preview:|run folder:)", line)] == \
        view.messages[::-1]
    assert printed[-1] == f"run folder: {view.result['run_dir']}"

    shown = live_view(ViewCache().get(_replayed()))  # the Train tab's poll path
    assert shown.status == status_markdown(view) == "**train flatcol** — finished · step 12/12 · 24.53 it/s"
    assert shown.progress == view.fraction == 1.0 and not shown.running
    series = view.loss_series()
    assert shown.loss == {"loss": series["loss"], "smoothed": series["smoothed"], "eval": series["eval"]}
    assert list(shown.norms) == ["v0", "v1"] and sum(map(len, shown.norms.values())) == 2 * 12
    assert shown.previews == [(p.path, f"step {p.step} · seed {p.seed} · {p.prompt}") for p in view.previews]
    assert f'<li class="ti-warn">⚠ {html.escape(view.warnings[0])}</li>' in shown.log  # the log: every note, newest first
    assert shown.log.index(view.messages[0]) < shown.log.index(view.messages[-1])
    assert shown.downloads == []  # the recorded files are not on this machine


def test_cli_with_a_bar_prints_the_same_lines_but_the_loss(capsys):
    assert follow(_replayed(), bar=True) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [line for line in PRINTED if not line.startswith("step 10: loss")]


def test_a_failed_or_interrupted_job_ends_the_cli_with_its_code(capsys):
    from jobs import events as ev

    failed = Job(id="f", kind="train", title="t")
    for e in (ev.State("running"), ev.Error("the final save failed: disk full", "TrainingError"), ev.State("failed")):
        failed.emit(e)
    failed.state = JobState.FAILED
    assert follow(failed, bar=False) == 1
    assert capsys.readouterr().out.splitlines() == ["error: the final save failed: disk full"]
    assert live_view(view_of(failed.events(), "t")).status.endswith("**Failed:** the final save failed: disk full")

    stopped = Job(id="s", kind="train", title="t")
    for e in (ev.State("running"), ev.Result({"run_dir": RUN, "stopped": "interrupted"}), ev.State("interrupted")):
        stopped.emit(e)
    stopped.state = JobState.INTERRUPTED
    assert follow(stopped, bar=False) == 130
    assert capsys.readouterr().out.splitlines() == [f"run folder: {RUN}",
                                                    f"resume with: python app.py train --resume {RUN}"]
