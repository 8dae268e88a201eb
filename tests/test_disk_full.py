"""A full disk never loses or corrupts saved work.

Real write failures, no mocks: the code runs in a subprocess whose file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored) makes any write past the limit fail with EFBIG, exactly as a
full disk fails with ENOSPC. The tiny model is built in the shared cache before the limited
process starts (its files are far larger than the limit).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["train_fixtures"]

# Run as `python -c LIMITED <limit> <script> args...`: the limit is set in the child itself, so
# nothing but the code under test runs under it.
LIMITED = textwrap.dedent("""
    import resource, runpy, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")  # cwd is the repository root, which `-c` puts first on sys.path


def run_limited(limit: int, script: str | Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", LIMITED, str(limit), str(script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def snapshot_files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def tmp_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


# ---- workspace.atomic ------------------------------------------------------------------------------
ATOMIC_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from PIL import Image
    from workspace.atomic import SaveError, atomic_write_bytes, atomic_write_text, atomic_write_with

    folder = Path(sys.argv[1])
    out = {}
    def attempt(key, fn):
        try:
            fn()
            out[key] = None
        except SaveError as e:
            out[key] = {"type": "SaveError", "errno": e.errno, "text": str(e), "target": str(e.target),
                        "disk_full": e.disk_full}
        except Exception as e:
            out[key] = {"type": type(e).__name__, "text": str(e)}
    attempt("bytes", lambda: atomic_write_bytes(folder / "big.bin", b"x" * 50_000))
    attempt("text", lambda: atomic_write_text(folder / "old.txt", "y" * 50_000))
    noise = Image.effect_noise((256, 256), 100).convert("RGB")
    attempt("pil", lambda: atomic_write_with(folder / "image.png", lambda t: noise.save(t, format="PNG")))
    attempt("small", lambda: atomic_write_text(folder / "small.txt", "fits"))
    print(json.dumps(out))
""")


def test_atomic_write_past_the_size_limit_leaves_the_target_and_no_temp(tmp_path):
    folder = tmp_path / "files"
    folder.mkdir()
    (folder / "old.txt").write_text("the old content")
    (folder / "image.png").write_bytes(b"an old image")
    script = tmp_path / "atomic_script.py"
    script.write_text(ATOMIC_SCRIPT)
    before = snapshot_files(folder)

    proc = run_limited(20_000, script, str(folder))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])

    for key, target in (("bytes", "big.bin"), ("text", "old.txt"), ("pil", "image.png")):
        err = out[key]
        assert err is not None and err["type"] == "SaveError", (key, err)
        assert err["errno"] == errno.EFBIG and err["disk_full"]
        assert err["target"] == str(folder / target)
        assert str(folder / target) in err["text"] and "disk full" in err["text"]
    assert out["small"] is None
    # the targets that existed are byte-identical, the new big one does not exist, no temp file remains
    after = snapshot_files(folder)
    assert {p: b for p, b in after.items() if p in before} == before
    assert not (folder / "big.bin").exists()
    assert (folder / "small.txt").read_text() == "fits"
    assert set(after) == set(before) | {folder / "small.txt"}
    assert not tmp_leftovers(folder) and not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_save_error_reasons_keep_errno_and_name_the_file(tmp_path):
    """Every disk-full errno reads "disk full"; a writer's own missing source is named, not blamed
    on the target (a copy from a file that vanished)."""
    from workspace.atomic import SaveError, atomic_write_with, is_disk_full

    for code in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        e = SaveError.from_os_error(tmp_path / "x.pt", OSError(code, os.strerror(code)))
        assert e.errno == code and e.disk_full and is_disk_full(e) and isinstance(e, OSError)
        assert str(e).startswith(f"cannot save {tmp_path / 'x.pt'}: disk full")
    e = SaveError.from_os_error(tmp_path / "x.pt", OSError(errno.EROFS, os.strerror(errno.EROFS)))
    assert not e.disk_full and "read-only" in str(e)
    missing = tmp_path / "gone.safetensors"
    target = tmp_path / "copy.safetensors"
    try:
        atomic_write_with(target, lambda tmp: Path(tmp).write_bytes(missing.read_bytes()))
    except SaveError as err:
        assert err.errno == errno.ENOENT and str(missing) in str(err) and str(target) in str(err)
    else:
        raise AssertionError("a missing source must fail the save")
    assert not target.exists() and not list(tmp_path.iterdir())


# ---- training -----------------------------------------------------------------------------------
def test_training_with_a_full_disk_warns_keeps_the_last_good_files_and_fails_only_the_final_save(
        tiny_model, data, solid_dataset):
    """Snapshots in PNG (~23 kB) and the resume bundle (~29 kB) do not fit under a 15 kB limit,
    safetensors snapshots (~2 kB) do: the run warns and goes on; the final PNG fails the job."""
    from PIL import Image
    from train_fixtures import make_embedding, tiny_config

    from embeddings.formats import load_embedding
    from jobs.registry import Job
    from training.checkpoint import load_bundle
    from training.run_folder import RunFolder
    from training.trainer import train

    make_embedding(tiny_model, data)
    config = tiny_config(data, solid_dataset, max_steps=2, save_every=1, run_name="full",
                         snapshot_formats=["safetensors", "png"])
    train(config, tiny_model, data, Job(id="a", kind="train", title="a"))  # room enough: step 2 saved
    run = RunFolder(data.runs / "full")
    library = data.embeddings / "flatcol.safetensors"
    logs = {run.settings_path, run.loss_csv, run.events_path}  # rewritten / appended by the resume
    before = {p: b for p, b in snapshot_files(data.root).items() if p not in logs}
    loss_before = run.loss_csv.read_bytes()
    assert run.bundle_path in before and library in before and (run.final / "flatcol.png") in before

    proc = run_limited(15_000, ROOT / "app.py", "--data-dir", str(data.root), "train", "--no-bar",
                       "--resume", str(run.path), "--steps", "5",
                       "--set", 'snapshot_formats=["png", "safetensors"]')
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    lines = out.splitlines()
    for step in (3, 4, 5):  # each save: the PNG snapshot and the bundle are warnings naming the file
        png = run.image_embeddings / f"flatcol-{step:06d}.png"
        assert any(ln.startswith("warning: ") and str(png) in ln and "disk full" in ln for ln in lines), out
    bundle_warnings = [ln for ln in lines if ln.startswith("warning: ") and str(run.bundle_path) in ln]
    assert len(bundle_warnings) == 3 and all("disk full" in ln for ln in bundle_warnings), out
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and str(run.final / "flatcol.png") in errors[0] and "disk full" in errors[0], out
    assert "embeddings folder was not changed" in errors[0]

    # everything saved before is byte-identical (library embedding, bundle, snapshots, final files)
    after = snapshot_files(data.root)
    assert {p: after.get(p) for p in before} == before
    assert run.loss_csv.read_bytes().startswith(loss_before)
    assert [r["step"] for r in run.read_loss()] == [1, 2, 3, 4, 5]
    # what the limited run did write is whole: the safetensors snapshots, at their steps
    for step in (3, 4, 5):
        snap = load_embedding(run.snapshots / f"flatcol-{step:06d}.safetensors")
        assert snap.step == step and snap.is_finite()
        assert not (run.image_embeddings / f"flatcol-{step:06d}.png").exists()
    assert not tmp_leftovers(data.root)
    # every file present loads
    assert load_bundle(run.bundle_path).step == 2
    for p in [*run.snapshot_files(), *run.final.iterdir(), library]:
        assert load_embedding(p).is_finite(), p
    for p in run.image_embeddings.glob("*.png"):
        with Image.open(p) as im:
            im.verify()
    # and the last good bundle resumes
    rest = train(tiny_config(data, solid_dataset, max_steps=3, save_every=1, run_name="full"), tiny_model, data,
                 Job(id="b", kind="train", title="b"), run=run, resume=True)
    assert rest["step"] == 3 and not rest["fresh_optimizer"]
    assert load_embedding(library).step == 3


# ---- preprocessing ----------------------------------------------------------------------------------
def _noise(size: int, seed: int):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_preprocess_stops_at_the_first_output_a_full_disk_refuses(tmp_path):
    """Solid-colour 512 px PNGs (~2 kB) fit under a 100 kB limit, a noise one (~780 kB) does not:
    the job stops there with one message naming the file; what was written is whole."""
    from PIL import Image

    from preprocessing.job import run_preprocess
    from preprocessing.options import PreprocessOptions

    src, first, dst = tmp_path / "src", tmp_path / "first", tmp_path / "dst"
    for folder in (src, first):
        folder.mkdir()
    Image.new("RGB", (600, 600), (200, 30, 30)).save(src / "00-red.png")
    Image.new("RGB", (600, 600), (200, 30, 30)).save(first / "00-red.png")
    Image.new("RGB", (600, 600), (30, 30, 200)).save(src / "01-blue.png")
    _noise(600, 1).save(src / "02-noise.png")
    Image.new("RGB", (600, 600), (30, 200, 30)).save(src / "03-green.png")
    done = run_preprocess(first, dst, PreprocessOptions(prefix="sks", flip=True))  # an earlier run
    assert len(done.outputs) == 2 and not done.error
    (dst / "notes.md").write_text("the user's own file")
    before = snapshot_files(dst)

    proc = run_limited(100_000, ROOT / "app.py", "preprocess", str(src), str(dst), "--prefix", "sks", "--flip",
                       "--quiet")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, out
    assert str(dst / "02-noise-flip.png") in errors[0] and "disk full" in errors[0]
    assert "wrote 2 image(s) and 2 caption(s)" in errors[0]  # 01-blue and its flipped copy

    after = snapshot_files(dst)
    assert {p: after.get(p) for p in before} == before
    assert sorted(p.name for p in set(after) - set(before)) == ["01-blue-flip.png", "01-blue-flip.txt",
                                                              "01-blue.png", "01-blue.txt"]
    assert not tmp_leftovers(dst) and not [p for p in dst.iterdir() if p.name.startswith(".")]
    for p in dst.glob("*.png"):
        with Image.open(p) as im:
            im.verify()
    for p in dst.glob("*.txt"):
        assert p.read_text() == "sks\n"

    # with room again, the same command finishes the folder; nothing is done twice
    rest = run_preprocess(src, dst, PreprocessOptions(prefix="sks", flip=True))
    assert not rest.error
    assert sorted(Path(p).name for p in rest.already_done) == ["00-red.png", "01-blue.png"]
    assert sorted(Path(p).name for p in rest.outputs) == ["02-noise-flip.png", "02-noise.png",
                                                         "03-green-flip.png", "03-green.png"]


def test_preprocess_job_fails_with_the_written_list_as_its_result(tmp_path):
    """In process (the UI's path): the job fails naming the file and its result lists the outputs."""
    script = tmp_path / "job_script.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        from jobs.registry import Job, run_job
        from preprocessing.job import preprocess_job
        from preprocessing.options import PreprocessOptions
        job = Job(id="p", kind="preprocess", title="p",
                  fn=preprocess_job(sys.argv[1], sys.argv[2], PreprocessOptions(prefix="sks")))
        run_job(job)
        print(json.dumps({"state": job.state.value, "error": job.error, "result": job.result}))
    """))
    from PIL import Image

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    Image.new("RGB", (512, 512), (200, 30, 30)).save(src / "a.png")
    _noise(512, 2).save(src / "b.png")
    proc = run_limited(100_000, script, str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["state"] == "failed"
    assert str(dst / "b.png") in out["error"] and "disk full" in out["error"]
    assert out["result"]["outputs"] == [str(dst / "a.png")] and out["result"]["captions_written"] == 1
    assert out["result"]["error"] == out["error"]
    assert sorted(p.name for p in dst.iterdir()) == ["a.png", "a.txt"]
