"""The hostile-input corpus (tests/hostile_corpus.py) through every door: the CLI, the web UI's
upload paths (Preprocess drop, Embeddings "Add files") and the folder scans. Each bad file gets
one message naming it and the reason, the good files are all used, no pickled code runs, and
memory stays bounded (the bomb is refused from its header)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.hostile_corpus import LONG_STEM, Case, embedding_cases, image_cases, write_cases

ROOT = Path(__file__).resolve().parents[1]
pytest_plugins = ["tests.ui_fixtures"]
pytestmark = pytest.mark.timeout(600)

# Scans word an unsupported suffix a little differently from preprocess ("not an image (unsupported
# type '.svg')"); both name the suffix.
SCAN_WORDING = {"drawing.svg": r"not an image.*\.svg", "photo.heic": r"not an image.*\.heic"}


def _bad(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.expect is not None]


def _one_message_each(cases: list[Case], messages: list[str], wording: dict[str, str] | None = None) -> None:
    """Every bad case has exactly one message that names its file and matches its reason."""
    for case in _bad(cases):
        about = [m for m in messages if case.name in m]
        assert len(about) == 1, (case.name, about)
        expect = (wording or {}).get(case.name, case.expect)
        assert re.search(expect, about[0]), (case.name, about[0])


def _with_links(folder: Path, outside: Path, valid_source: Path) -> None:
    """A link to a file outside the data folder (read, never written through) and one whose target vanished."""
    target = outside / valid_source.name
    target.write_bytes(valid_source.read_bytes())
    (folder / f"outside-link{valid_source.suffix}").symlink_to(target)
    (folder / f"vanished{valid_source.suffix}").symlink_to(outside / "gone-before-the-scan")


# Runs a script as __main__ and reports its own peak RSS on stderr (RUSAGE_CHILDREN of the test
# process would be the peak of every child the suite ever started).
PEAK_RSS_WRAPPER = (
    "import resource, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


# ---- images ---------------------------------------------------------------------------------------
def test_images_through_the_cli(tmp_path):
    cases = image_cases()
    src, dst, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "outside"
    outside.mkdir()
    paths = write_cases(src, cases)
    _with_links(src, outside, paths["cmyk.jpg"])
    before = (outside / "cmyk.jpg").read_bytes()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-c", PEAK_RSS_WRAPPER, str(ROOT / "app.py"), "preprocess", str(src), str(dst), "--width", "64", "--height", "64",
           "--flip", "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning: ")]
    _one_message_each(cases, warnings)
    assert [w for w in warnings if "vanished.jpg" in w and "broken link" in w]
    assert len(warnings) == len(_bad(cases)) + 1  # nothing else complained
    # every good file became an image (and its flipped copy); the link was read, its target untouched
    _all_good_written(cases, dst)
    assert (dst / "outside-link.png").is_file() and not (dst / "outside-link.png").is_symlink()
    assert (outside / "cmyk.jpg").read_bytes() == before
    _check_exif_outputs_any(dst)
    # bounded memory: a decoded 30000x30000 bomb alone would be 2.7 GB
    peak = [int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB ")]
    # this process's own peak: ~1.5 GB with torch loaded; a decoded bomb would add 2.6 GB on top
    assert peak and peak[0] < 2_500_000, proc.stderr[-2000:]


def _check_exif_outputs_any(dst: Path) -> None:
    for o in range(1, 9):
        out = next(dst.glob(f"exif-orientation-{o}.*"))
        with Image.open(out) as im:
            rgb = im.convert("RGB")
            top_left, bottom_right = rgb.getpixel((3, 3)), rgb.getpixel((60, 60))
        assert top_left[0] > 180 and top_left[2] < 80 and bottom_right[2] > 180, (o, top_left, bottom_right)


def test_images_through_the_dataset_scan(tmp_path):
    from training.config import TrainConfig
    from training.dataset import scan_dataset

    cases = image_cases()
    folder, outside = tmp_path / "ds", tmp_path / "outside"
    outside.mkdir()
    paths = write_cases(folder, cases)
    _with_links(folder, outside, paths["cmyk.jpg"])
    records, skipped = scan_dataset(folder, TrainConfig(resolution=64).data_options())
    messages = [f"{p.name}: {why}" for p, why in skipped]
    _one_message_each(cases, messages, SCAN_WORDING)
    assert len(messages) == len(_bad(cases)) + 1 and any("vanished.jpg" in m for m in messages)
    used = {r.path.name for r in records}
    assert used == {c.name for c in cases if c.expect is None} | {"outside-link.jpg"}


# ---- embeddings ---------------------------------------------------------------------------------
def test_embeddings_through_the_cli_inspect(tmp_path, capsys):
    from cli import main

    marker = tmp_path / "MARKER"
    cases = embedding_cases(marker)
    paths = write_cases(tmp_path / "files", cases)
    for case in cases:
        code = main(["inspect", str(paths[case.name])])
        out, err = capsys.readouterr()
        if case.expect is None:
            assert code == 0 and "fits:     tiny" in out, (case.name, err)
        elif re.search(case.expect, "NaN/inf") and code == 0:  # readable, and it says it is unhealthy
            assert "healthy:  NO: contains NaN/inf" in out, case.name
        else:
            assert code == 2 and err.count("\n") == 1 and case.name in err, (case.name, err)
            assert re.search(case.expect, err), (case.name, err)
    assert not marker.exists()  # no pickled code ran


def test_embeddings_through_the_library_scan(tmp_path):
    from embeddings.library import EmbeddingLibrary

    marker = tmp_path / "MARKER"
    cases = embedding_cases(marker)
    folder, outside = tmp_path / "embeddings", tmp_path / "outside"
    outside.mkdir()
    paths = write_cases(folder, cases)
    _with_links(folder, outside, paths["with spaces.safetensors"])
    lib = EmbeddingLibrary(folder, widths={"clip_l": 32})
    lib.refresh()
    entries = {e.path.name: e for e in lib.entries()}
    messages = [f"{name}: {e.reason}" for name, e in entries.items() if not e.ok]
    _one_message_each(cases, messages)
    assert entries["outside-link.safetensors"].ok  # read through the link
    assert not entries["vanished.safetensors"].ok and entries["vanished.safetensors"].reason
    assert {n for n, e in entries.items() if e.ok} == {c.name for c in cases if c.expect is None} | {
        "outside-link.safetensors"}
    assert not marker.exists()


# ---- the web UI's upload paths (the `app` fixture: tests.ui_fixtures) ------------------------------
def test_embeddings_through_add_files(app, tmp_path):
    from gradio_client import handle_file

    marker = tmp_path / "MARKER"
    cases = embedding_cases(marker)
    paths = write_cases(tmp_path / "up", cases)
    c = app.client()
    status, *_ = c.predict([handle_file(str(paths[x.name])) for x in cases], api_name="/add_embeddings")
    problems = status.split("Not added: ", 1)[1].split("; ") if "Not added: " in status else []
    _one_message_each(cases, problems)
    for case in cases:  # Gradio shortens a very long upload name; the file is still added
        if case.expect is None:
            assert list(app.data.embeddings.glob(glob.escape(Path(case.name).stem[:60]) + "*.safetensors")), (case.name, status)
    assert not marker.exists()
    table, _ = c.predict(None, api_name="/library")  # the server keeps serving
    assert {r[0] for r in table["data"]} >= {"with spaces", "猫 é"}


def test_images_through_the_preprocess_drop(app, tmp_path):
    from gradio_client import handle_file

    from tests.test_ui_workflow import _pre_args

    cases = image_cases()
    paths = write_cases(tmp_path / "drop", cases)
    c = app.client()
    msg = c.predict("hostile", [handle_file(str(paths[x.name])) for x in cases], None, "",
                    *_pre_args(width=64, height=64), api_name="/preprocess")
    assert "hostile" in msg
    job = app.ctx.registry.jobs("preprocess")[-1]
    deadline = time.time() + 240
    while not job.state.done and time.time() < deadline:
        time.sleep(0.2)
    assert job.state.done and job.error is None, job.error
    result = job.result
    messages = [f"{Path(p).name}: {why}" for p, why in result["skipped"]]
    _one_message_each(cases, messages)
    dst = app.data.datasets / "hostile"
    _all_good_written(cases, dst)
    _check_exif_outputs_any(dst)
    table, _ = c.predict(None, api_name="/library")  # the server keeps serving
    assert table is not None


def _all_good_written(cases: list[Case], dst: Path) -> None:
    """An output for each good case (names start with the source's stem; a very long one is cut)."""
    written = sorted(p.name for p in dst.iterdir())
    for case in cases:
        if case.expect is None:
            assert list(dst.glob(glob.escape(Path(case.name).stem[:60]) + "*")), (case.name, written)
    long = [n for n in written if n.startswith(LONG_STEM[:60])]
    assert long and all(len(n.encode()) <= 255 for n in long)
