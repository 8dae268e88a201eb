"""`python app.py train` as a subprocess: config file + flags, SIGKILL mid-run, resume, two CPU processes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embeddings.formats import load_embedding
from tests.process_fixtures import sigkill_when
from training.checkpoint import load_bundle
from training.run_folder import RunFolder

pytest_plugins = ["train_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def _app(data, *args, **popen):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(ROOT / "app.py"), "--data-dir", str(data.root), "train", "--no-bar", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def _config(tmp_path, dataset, **extra) -> Path:
    import tomli_w

    values = dict(embedding="flatcol", dataset=str(dataset), model="tiny", resolution=64, lr="0.02",
                  template="subject", save_every=1, preview_every=0, not_learning_steps=0, seed=1)
    values.update(extra)
    path = tmp_path / "run.toml"
    path.write_text(tomli_w.dumps(values))
    return path


def test_bad_config_is_one_line_error(data, tmp_path, solid_dataset):
    cfg = _config(tmp_path, solid_dataset, lr="0.01:oops")
    proc = _app(data, "--config", str(cfg))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error: run.toml: lr:" in out and "oops" in out


def test_sigkill_mid_run_leaves_resumable_files(tiny_model, data, tmp_path, solid_dataset, tiny_embedding):
    cfg = _config(tmp_path, solid_dataset, max_steps=1000, run_name="killed")
    proc = _app(data, "--config", str(cfg), "--set", "snapshot_formats=[\"safetensors\", \"pt\"]")
    run = RunFolder(data.runs / "killed")
    sigkill_when(proc, lambda: run.bundle_path.is_file() and len(run.read_loss()) >= 3, timeout=240)
    # every file in the run folder loads
    state = load_bundle(run.bundle_path)
    assert state.step >= 2
    assert run.read_settings()["max_steps"] == 1000
    steps = [r["step"] for r in run.read_loss()]
    assert steps[: state.step] == list(range(1, state.step + 1))
    assert run.read_events()
    for p in run.snapshot_files():
        assert load_embedding(p).is_finite()
    # and the run resumes from the bundle to a new target
    proc = _app(data, "--resume", str(run.path), "--steps", str(state.step + 2))
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    assert f"resuming flatcol at step {state.step}" in out
    assert load_bundle(run.bundle_path).step == state.step + 2
    assert [r["step"] for r in run.read_loss()] == list(range(1, state.step + 3))
    assert not list(run.path.rglob(".*.tmp"))  # the killed run's temp files were cleaned when the resume began


@pytest.mark.slow
def test_two_cpu_processes_with_accelerate(tiny_model, data, tmp_path, solid_dataset, tiny_embedding):
    """Data parallel on CPU: two processes, averaged gradients, one run folder written by rank 0."""
    cfg = _config(tmp_path, solid_dataset, max_steps=2, run_name="ddp", save_every=0)
    proc = _launch_two(data, cfg, "--config", str(cfg), port=29517)
    assert "x 2 processes" in proc.stdout
    run = RunFolder(data.runs / "ddp")
    assert [r["step"] for r in run.read_loss()] == [1, 2]
    final = load_embedding(run.final / "flatcol.safetensors")
    assert final.step == 2 and final.is_finite()
    assert not (data.runs / "ddp-2").exists()  # one run folder, not one per process


def _launch_two(data, cfg: Path, *extra: str, port: int) -> subprocess.CompletedProcess:
    """`app.py train` on two CPU processes. accelerate's --cpu starts one process unless given an
    MPI hostfile; --multi_gpu on a machine without CUDA starts two torchrun workers, which our loop
    joins over gloo on the CPU."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1"}
    launcher = Path(sys.executable).parent / "accelerate"
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision",
           "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(ROOT / "app.py"), "--data-dir",
           str(data.root), "train", "--no-bar", *extra]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_two_processes_resume_is_bit_exact(tiny_model, data, tmp_path, solid_dataset, tiny_embedding):
    """4 steps on two processes == 2 steps, resume, 2 more: every rank's random state is in the bundle.

    Each rank draws its own noise and timesteps; a bundle holding only rank 0's state would give
    rank 1 rank 0's stream after the resume, and the averaged gradients (so the vectors) would differ."""
    starts = {}
    for name in ("straight", "halves"):  # the library copy is overwritten by a finished run: one start each
        starts[name] = tmp_path / name / "flatcol.safetensors"
        starts[name].parent.mkdir()
        shutil.copy(tiny_embedding, starts[name])
    straight = _config(tmp_path, solid_dataset, max_steps=4, run_name="straight", save_every=0, flip_p=0.5,
                       embedding=str(starts["straight"]))
    _launch_two(data, straight, "--config", str(straight), port=29531)
    halves = _config(tmp_path, solid_dataset, max_steps=2, run_name="halves", save_every=0, flip_p=0.5,
                     embedding=str(starts["halves"]))
    _launch_two(data, halves, "--config", str(halves), port=29533)
    bundle = load_bundle(RunFolder(data.runs / "halves").bundle_path)
    assert len(bundle.rank_rng) == 2  # both ranks' states, and they differ (seeded per rank)
    assert not torch.equal(bundle.rank_rng[0]["generator"], bundle.rank_rng[1]["generator"])
    proc = _launch_two(data, halves, "--resume", str(data.runs / "halves"), "--steps", "4", port=29535)
    assert "resuming flatcol at step 2" in proc.stdout
    a = load_embedding(RunFolder(data.runs / "straight").final / "flatcol.safetensors")
    b = load_embedding(RunFolder(data.runs / "halves").final / "flatcol.safetensors")
    assert a.step == b.step == 4
    for key in a.vectors:
        assert torch.equal(a.vectors[key], b.vectors[key]), key
