"""What the Train tab's live view needs from a run: phases, an ETA that prices previews in, and an
interrupt that stops a preview in progress (between two denoising steps) and still saves."""

from __future__ import annotations

import threading

from jobs import events as ev
from jobs.registry import Job
from jobs.view import view_of
from training.trainer import train

pytest_plugins = ["train_fixtures"]


def test_interrupt_stops_a_preview_in_progress_then_saves(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    # 500 denoising steps: a preview that would run for a long while if it were not cut
    config = tiny_config(data, solid_dataset, max_steps=4, preview_every=2, preview_steps=500)
    job = Job(id="t", kind="train", title="t")

    def stop_in_first_preview():
        cursor = 0
        while True:
            new, cursor = job.wait_events(cursor, timeout=60)
            if any(isinstance(e.payload, ev.Progress) and e.payload.phase == "preview" for e in new):
                job.request_stop()
                return

    watcher = threading.Thread(target=stop_in_first_preview, daemon=True)
    watcher.start()
    result = train(config, tiny_model, data, job)
    watcher.join(5)
    assert result["stopped"] == "interrupted" and result["step"] == 2
    view = view_of(job.events())
    assert view.previews == []  # the cut preview was not written, and no final preview was started
    assert "preview at step 2 stopped by the interrupt" in view.messages, view.notes
    assert any(p.endswith(".safetensors") for f in view.files for p in f.paths)  # the interrupt still saved
    phases = [e.payload.phase for e in job.events(ev.Progress)]
    assert phases[0] == "latents" and None in phases and "preview" in phases


def test_eta_counts_the_previews_still_to_come(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    job = Job(id="e", kind="train", title="e")
    train(tiny_config(data, solid_dataset, max_steps=6, preview_every=2, preview_steps=3), tiny_model, data, job)
    loop = [e.payload for e in job.events(ev.Progress) if e.payload.phase is None]
    for p in loop[:-1]:  # each ETA is more than the steps left alone would take
        assert p.eta_s > (p.total - p.done) / p.it_s
    view = view_of(job.events())
    assert view.phase is None and view.activity() == "training" and [p.step for p in view.previews] == [2, 4, 6]
