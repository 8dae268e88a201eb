"""Temp files left by a killed writer are removed when a folder is scanned or a job starts; only
ours, and only when the process that wrote them can no longer be writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from workspace.atomic import remove_stale_temps

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["train_fixtures"]

# A writer that creates its temp file (through the one atomic-write helper) and is killed inside it.
WRITER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from workspace.atomic import atomic_path
with atomic_path(sys.argv[2]) as tmp:
    tmp.write_bytes(b"half")
    print("writing", flush=True)
    time.sleep(60)
"""


def _killed_writer(target: Path) -> Path:
    """The temp file a SIGKILLed atomic write leaves next to `target`."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(ROOT), str(target)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    left = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    assert len(left) == 1 and not target.exists()
    assert f".{proc.pid}-" in left[0].name  # the writer's pid is in the name
    return left[0]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(10)
    return proc.pid


def test_only_our_stale_temps_go(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    dead = _dead_pid()
    old = time.time() - 3 * 24 * 3600
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        time.sleep(0.2)
        names = {
            f".cat.safetensors.{dead}-abcd_123.tmp": "gone",  # writer is dead
            f".cat.pt.{os.getpid()}-abcd_123.tmp": "kept",  # this process: another thread may be writing
            f".cat.png.{sleeper.pid}-zzzzzzzz.tmp": "kept",  # a live writer
            f".reused.png.{sleeper.pid}-yyyyyyyy.tmp": "gone",  # older than the live process with its pid
            ".cat.png.ab12cd34.tmp": "kept",  # no pid in the name, and recent
            ".old.png.ab12cd34.tmp": "gone",  # no pid in the name, and days old
            ".someone-else.tmp": "kept",  # not our name shape
            "visible.1234-abcdefgh.tmp": "kept",  # not hidden
            f".cat.txt.{dead}-abcd.tmp": "kept",  # not mkstemp's 8 characters
        }
        for name in names:
            (folder / name).write_bytes(b"x")
        os.utime(folder / ".old.png.ab12cd34.tmp", (old, old))
        os.utime(folder / f".reused.png.{sleeper.pid}-yyyyyyyy.tmp", (old, old))
        outside = tmp_path / f".victim.png.{dead}-abcdefgh.tmp"
        outside.write_bytes(b"not in the folder")
        (folder / f".link.png.{dead}-abcdefgh.tmp").symlink_to(outside)  # a link is never ours
        (folder / "sub").mkdir()
        (folder / "sub" / f".deep.png.{dead}-abcdefgh.tmp").write_bytes(b"x")

        removed = remove_stale_temps(folder)
        assert sorted(p.name for p in removed) == sorted(n for n, fate in names.items() if fate == "gone")
        assert all((folder / n).exists() for n, fate in names.items() if fate == "kept")
        assert outside.exists() and (folder / f".link.png.{dead}-abcdefgh.tmp").is_symlink()
        assert (folder / "sub" / f".deep.png.{dead}-abcdefgh.tmp").exists()  # not recursive unless asked
        assert [p.name for p in remove_stale_temps(folder, recursive=True)] == [f".deep.png.{dead}-abcdefgh.tmp"]
        assert remove_stale_temps(tmp_path / "missing") == []  # never fails the caller
    finally:
        sleeper.kill()
        sleeper.wait()


def test_library_scan_removes_a_killed_save(tmp_path):
    from embeddings.library import EmbeddingLibrary

    folder = tmp_path / "embeddings"
    folder.mkdir()
    left = _killed_writer(folder / "cat.safetensors")
    EmbeddingLibrary(folder).refresh()
    assert not left.exists()


def test_dataset_scan_and_preprocess_start_remove_a_killed_write(tmp_path):
    from preprocessing import PreprocessOptions, run_preprocess
    from training.config import TrainConfig
    from training.dataset import scan_dataset

    dataset = tmp_path / "ds"
    dataset.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(dataset / "a.png")
    left = _killed_writer(dataset / "b.png")
    scan_dataset(dataset, TrainConfig(resolution=64).data_options())
    assert not left.exists()

    out = tmp_path / "out"
    out.mkdir()
    left = _killed_writer(out / "a.png")
    run_preprocess(dataset, out, PreprocessOptions(width=64, height=64))
    assert not left.exists() and (out / "a.png").is_file()


def test_training_start_removes_a_killed_snapshot(tiny_model, data, tmp_path):
    from train_fixtures import make_dataset, make_embedding, tiny_config

    from jobs.registry import Job
    from training.run_folder import RunFolder
    from training.trainer import train

    make_embedding(tiny_model, data)
    run = RunFolder.create(data.runs, "flatcol", "tidy")
    left = _killed_writer(run.snapshots / "flatcol-1.safetensors")
    train(tiny_config(data, make_dataset(tmp_path / "solid", n=2), max_steps=1), tiny_model, data,
          Job(id="t", kind="train", title="t"), run=run)
    assert not left.exists()
