"""`app.py preprocess` killed with SIGKILL mid-run leaves only whole outputs, and the same
command run again (default: skip what is done) completes the folder with each source once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.process_fixtures import sigkill_when

ROOT = Path(__file__).resolve().parents[1]
N = 40


def _preprocess(src: Path, dst: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # focal crops (edge and entropy scoring) of noise, and flipped copies: slow enough to kill mid-run
    cmd = [sys.executable, str(ROOT / "app.py"), "preprocess", str(src), str(dst), "--crop", "focal", "--flip",
           "--prefix", "sks", "--quiet"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _outputs(dst: Path) -> list[Path]:
    return sorted(p for p in dst.glob("*.png") if not p.name.startswith("."))


def _check_whole(dst: Path) -> None:
    """Every image opens and is 512x512; each has its complete caption; no caption without image."""
    for p in _outputs(dst):
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            im.load()
            assert im.size == (512, 512), p
        assert p.with_suffix(".txt").read_text(encoding="utf-8") == "sks\n", p
    captions = {p.stem for p in dst.glob("*.txt") if not p.name.startswith(".")}
    assert captions == {p.stem for p in _outputs(dst)}


def test_sigkill_mid_preprocess_then_rerun_completes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N):
        Image.fromarray(rng.integers(0, 256, (560, 560, 3), dtype=np.uint8)).save(src / f"img{i:02d}.png",
                                                                                  compress_level=0)

    proc = _preprocess(src, dst)
    sigkill_when(proc, lambda: dst.is_dir() and len(_outputs(dst)) >= 6, timeout=120, poll=0.01)
    written = _outputs(dst)
    assert 6 <= len(written) < 2 * N, "the kill should land mid-run"
    _check_whole(dst)
    kept = {p: p.read_bytes() for p in written}

    proc = _preprocess(src, dst)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    _check_whole(dst)
    names = sorted(p.name for p in _outputs(dst))
    expected = sorted([f"img{i:02d}.png" for i in range(N)] + [f"img{i:02d}-flip.png" for i in range(N)])
    assert names == expected  # each source exactly once (and its flipped copy), nothing renamed
    # the rerun skipped what the kill had finished (an image present means its outputs are whole)
    done_before = [p for p in written if not p.stem.endswith("-flip")]
    assert f"{len(done_before)} already done" in out, out
    assert {p: p.read_bytes() for p in written} == kept
