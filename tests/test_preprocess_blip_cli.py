"""BLIP end to end with the tiny BLIP, the offline error, and the `preprocess` command."""

import json
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cli import main as cli_main
from preprocessing import CaptionerError, PreprocessOptions, build_tiny_blip, load_blip, run_preprocess
from preprocessing.captioners import _TINY_WORDS
from tests.preprocess_fixtures import noise, tiny_blip, tiny_blip_dir  # noqa: F401 - fixtures

MISSING = "example-org/blip-never-downloaded"


def test_tiny_blip_is_deterministic_and_reused(tmp_path, tiny_blip_dir):  # noqa: F811
    other = build_tiny_blip(tmp_path / "again")
    a, b = load_file(tiny_blip_dir / "model.safetensors"), load_file(other / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    stamp = (other / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_blip(other) == other and (other / "model.safetensors").stat().st_mtime_ns == stamp


def test_tiny_blip_captions_batches_like_single_images(tiny_blip):  # noqa: F811
    images = [noise((48, 40), seed=s) for s in range(3)]
    batch = tiny_blip.caption(images)
    assert batch == [tiny_blip.caption([im])[0] for im in images]
    words = set(_TINY_WORDS)
    assert all(c and set(c.split()) <= words for c in batch)


def test_blip_end_to_end_through_the_job(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        noise((80, 80), seed=i).save(src / f"img{i}.png")
    o = PreprocessOptions(width=64, height=64, captioner="blip", blip_model="tiny-blip", device="cpu",
                          cache_dir=str(tmp_path / "cache"), caption_batch_size=2, caption_beams=1,
                          caption_max_tokens=6, prefix="sks")
    r = run_preprocess(src, tmp_path / "out", o)
    assert (tmp_path / "cache" / "tiny-blip" / "config.json").is_file()
    assert r.captions_written == 3
    check = load_blip(tmp_path / "cache" / "tiny-blip", "cpu", max_new_tokens=6, num_beams=1)
    for i in range(3):
        out = tmp_path / "out" / f"img{i}.png"
        expected = "sks, " + check.caption([Image.open(out)])[0]
        assert out.with_suffix(".txt").read_text(encoding="utf-8") == expected + "\n"
    check.close()
    assert check.model is None
    with pytest.raises(CaptionerError, match="closed"):
        check.caption([noise((8, 8))])


def test_missing_blip_offline_is_one_fast_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(CaptionerError) as err:
        load_blip(MISSING, "cpu")  # a hub id no cache can hold
    assert time.monotonic() - t < 60  # a sanity bound on "no network retries", not a benchmark
    msg = str(err.value)
    assert "\n" not in msg and f"huggingface-cli download {MISSING}" in msg and "not downloaded" in msg
    with pytest.raises(CaptionerError, match="does not exist"):
        load_blip(tmp_path / "no" / "such" / "blip", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match="incomplete"):
        load_blip(str(tmp_path / "empty"), "cpu")


def test_missing_blip_fails_before_any_output(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    noise((64, 64)).save(src / "a.png")
    with pytest.raises(CaptionerError):
        run_preprocess(src, tmp_path / "out", PreprocessOptions(captioner="blip", blip_model=MISSING))
    assert not any((tmp_path / "out").iterdir())


def test_cli_preprocess_runs_the_job(tmp_path, capsys):
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    noise((120, 90), seed=1).save(src / "one.png")
    noise((90, 90), seed=2).save(src / "deep" / "two.jpg")
    (src / "bad.png").write_bytes(b"")
    rc = cli_main(["--data-dir", str(tmp_path / "data"), "preprocess", str(src), str(tmp_path / "out"),
                   "--size", "64", "--flip", "--captioner", "blip", "--blip-model", "tiny-blip", "--device", "cpu",
                   "--prefix", "sks", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert sorted(p.rsplit("/", 1)[1] for p in result["outputs"]) == [
        "deep-two-flip.png", "deep-two.png", "one-flip.png", "one.png"]
    assert result["skipped"] == [[str(src / "bad.png"), "empty file (0 bytes)"]]
    assert result["captions_written"] == 4
    assert (tmp_path / "out" / "one.txt").read_text(encoding="utf-8").startswith("sks, ")
    assert (tmp_path / "data" / "cache" / "tiny-blip" / "config.json").is_file()


def test_cli_errors_are_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    noise((64, 64)).save(src / "a.png")
    assert cli_main(["preprocess", str(src), str(src / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: destination") and "inside the source folder" in err and "\n" not in err
    assert cli_main(["preprocess", str(src)]) == 2
    assert "give a destination folder" in capsys.readouterr().err
    assert not (src / "out").exists()
