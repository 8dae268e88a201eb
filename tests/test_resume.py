"""Resume: 2N steps in one run == N steps + resume + N steps, bit for bit; interrupt saves and resumes."""

import torch

from embeddings.formats import load_embedding
from jobs.registry import Job, JobRegistry, JobState
from training.checkpoint import load_bundle
from training.run_folder import RunFolder
from training.service import interrupt, resume_training, start_training
from training.trainer import train

pytest_plugins = ["train_fixtures"]

# every source of randomness on: tag shuffle, flips, random latents, vector shuffle, accumulation
NOISY = dict(flip_p=0.5, latent_sampling="random", vector_shuffle="all", grad_accum=2, batch_size=2,
             shuffle_tags=True, lr="0.02", lr_kind="cosine", warmup_steps=1)


def test_resume_is_bit_exact(tiny_model, data, solid_dataset):
    from train_fixtures import make_embedding, tiny_config

    make_embedding(tiny_model, data)
    whole = train(tiny_config(data, solid_dataset, max_steps=4, run_name="whole", **NOISY), tiny_model, data,
                  Job(id="a", kind="train", title="a"))
    make_embedding(tiny_model, data)  # the same fresh embedding again
    half = train(tiny_config(data, solid_dataset, max_steps=2, run_name="half", **NOISY), tiny_model, data,
                 Job(id="b", kind="train", title="b"))
    run = RunFolder(data.runs / "half")
    assert load_bundle(run.bundle_path).step == 2
    job = Job(id="c", kind="train", title="c")
    rest = train(tiny_config(data, solid_dataset, max_steps=4, run_name="half", **NOISY), tiny_model, data, job,
                 run=run, resume=True)
    assert half["step"] == 2 and rest["step"] == 4 and not rest["fresh_optimizer"]
    a = load_embedding(whole["files"]["safetensors"])
    b = load_embedding(rest["files"]["safetensors"])
    assert torch.equal(a.vectors["clip_l"], b.vectors["clip_l"])
    # and the loss history reads as one run
    assert [r["step"] for r in run.read_loss()] == [1, 2, 3, 4]
    assert [r["loss"] for r in run.read_loss()] == [r["loss"] for r in RunFolder(data.runs / "whole").read_loss()]


def test_continue_from_bare_embedding_is_fresh_optimizer(tiny_model, data, solid_dataset, tiny_embedding):
    from train_fixtures import tiny_config

    train(tiny_config(data, solid_dataset, max_steps=2), tiny_model, data, Job(id="a", kind="t", title="a"))
    job = Job(id="b", kind="t", title="b")
    out = train(tiny_config(data, solid_dataset, max_steps=3), tiny_model, data, job)
    assert out["fresh_optimizer"] and out["step"] == 3 and out["steps_done"] == 1
    assert any("fresh optimizer" in e.data["text"] for e in job.events("message"))


def test_interrupt_saves_and_resume_continues(tiny_model, data, solid_dataset, tiny_embedding, monkeypatch):
    from train_fixtures import tiny_config

    import models.cache

    monkeypatch.setattr(models.cache, "_current", (("tiny", str(data.root)), tiny_model))
    registry = JobRegistry()
    blocker = registry.submit("other", "busy", lambda j: j.wait_events(10**6, timeout=1.0))
    job = start_training(registry, tiny_config(data, solid_dataset, max_steps=50, run_name="stopme"), data)
    first = [e.data for e in job.events()]
    assert first[0]["state"] == "queued" and first[0]["ahead"] == 1
    assert any("waiting for 1 job" in d.get("text", "") for d in first)
    blocker.wait(30)
    cursor = 0
    while True:  # stop as soon as the first step is reported
        events, cursor = job.wait_events(cursor, timeout=30)
        if any(e.kind == "loss" for e in events) or job.state.done:
            break
    interrupt(job)
    assert job.wait(60) == JobState.INTERRUPTED
    stopped_at = job.result["step"]
    assert 1 <= stopped_at <= 3  # within a step of the request
    run = RunFolder(data.runs / "stopme")
    assert load_bundle(run.bundle_path).step == stopped_at
    assert load_embedding(job.result["embedding"]).step == stopped_at
    again = resume_training(registry, run.path, data, max_steps=stopped_at + 2)
    assert again.wait(60) == JobState.FINISHED, again.events("error")
    assert again.result["step"] == stopped_at + 2 and not again.result["fresh_optimizer"]
    registry.shutdown()
