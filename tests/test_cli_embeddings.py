"""`app.py inspect` and `app.py convert`, through the real argument parser (`cli.main`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli import main
from embeddings.formats import load_embedding, save_embedding
from tests.formats_fixtures import make_embedding

ROOT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_text_and_json(tmp_path, capsys):
    emb = make_embedding("mystyle", {"clip_l": 768}, n=2, step=300, extremes=False)
    path = save_embedding(emb, tmp_path / "mystyle.safetensors")
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.splitlines() if ":" in line and not line.startswith(" "))
    assert lines["format"].strip() == "safetensors" and lines["name"].strip() == "mystyle"
    assert lines["vectors"].strip() == "2" and lines["width"].strip() == "clip_l 768"
    assert lines["fits"].strip() == "sd1" and lines["step"].strip() == "300" and lines["healthy"].strip() == "yes"
    assert "learn_rate" in out  # metadata shown
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    report = json.loads(out)
    norms = emb.vectors["clip_l"].norm(dim=1).tolist()
    assert report["norms"]["clip_l"] == pytest.approx(norms, rel=1e-5)
    assert report["fits"] == ["sd1"] and report["healthy"] is True and report["format"] == "safetensors"
    assert report["sha256"] == load_embedding(path).metadata["sha256"]


@pytest.mark.parametrize("widths,fits", [({"clip_l": 32}, ["tiny"]), ({"clip_h": 1024}, ["sd2"]),
                                         ({"clip_l": 768, "clip_g": 1280}, ["sdxl"]), ({"clip_l": 500}, [])])
def test_inspect_fits(tmp_path, capsys, widths, fits):
    path = save_embedding(make_embedding("e", widths), tmp_path / "e.safetensors")
    code, out, _ = run(capsys, "inspect", str(path), "--json")
    assert code == 0 and json.loads(out)["fits"] == fits


def test_inspect_unhealthy_and_bad_files(tmp_path, capsys):
    emb = make_embedding("sick", {"clip_l": 32})
    emb.vectors["clip_l"][0, 0] = float("nan")
    path = save_embedding(emb, tmp_path / "sick.pt")
    code, out, _ = run(capsys, "inspect", str(path))
    assert code == 0 and "NO: contains NaN/inf" in out
    (tmp_path / "zero.pt").write_bytes(b"")
    code, out, err = run(capsys, "inspect", str(tmp_path / "zero.pt"))
    assert code == 2 and out == "" and err.strip() == "error: zero.pt: empty file (0 bytes)"
    torch.save({"state_dict": {}}, tmp_path / "model.pt")
    code, _, err = run(capsys, "inspect", str(tmp_path / "model.pt"))
    assert code == 2 and err.startswith("error: model.pt: unknown layout") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("to,suffix", [("safetensors", ".safetensors"), ("pt", ".pt"), ("diffusers", ".bin"),
                                       ("png", ".png")])
def test_convert_every_format_bit_exact(tmp_path, capsys, to, suffix):
    emb = make_embedding("conv", {"clip_l": 768}, n=2)
    src = save_embedding(emb, tmp_path / "src" / "conv.png")
    code, out, _ = run(capsys, "convert", str(src), "--to", to, "-o", str(tmp_path / "out") + "/")
    target = tmp_path / "out" / f"conv{suffix}"
    assert code == 0 and str(target) in out
    assert load_embedding(target).equal(emb)


def test_convert_default_output_overwrite_and_rename(tmp_path, capsys):
    emb = make_embedding("orig", {"clip_l": 768, "clip_g": 1280}, n=2)
    src = save_embedding(emb, tmp_path / "orig.safetensors")
    code, _, _ = run(capsys, "convert", str(src), "--to", "diffusers")
    assert code == 0 and (tmp_path / "orig.bin").is_file() and (tmp_path / "orig_2.bin").is_file()
    code, _, err = run(capsys, "convert", str(src), "--to", "diffusers")
    assert code == 2 and "already exists (use --overwrite" in err
    assert run(capsys, "convert", str(src), "--to", "diffusers", "--overwrite")[0] == 0
    code, _, err = run(capsys, "convert", str(src), "--to", "safetensors", "--overwrite")
    assert code == 2 and "is the input file" in err
    # -o with a file name renames: the stem is the name in A1111 and inside .pt/.png.
    code, _, _ = run(capsys, "convert", str(tmp_path / "orig.bin"), "--to", "png", "-o", str(tmp_path / "newname.png"))
    back = load_embedding(tmp_path / "newname.png")
    assert code == 0 and back.name == "newname" and back.equal(emb)


def test_convert_refuses_broken_input(tmp_path, capsys):
    emb = make_embedding("sick", {"clip_l": 32})
    emb.vectors["clip_l"][1, 1] = float("inf")
    src = save_embedding(emb, tmp_path / "sick.safetensors")
    code, _, err = run(capsys, "convert", str(src), "--to", "pt")
    assert code == 2 and "NaN/inf" in err and not (tmp_path / "sick.pt").exists()
    (tmp_path / "junk.bin").write_bytes(b"\x80\x04garbage")
    code, _, err = run(capsys, "convert", str(tmp_path / "junk.bin"), "--to", "pt")
    assert code == 2 and err.startswith("error: junk.bin: ")


def test_app_entry_point_subprocess(tmp_path):
    path = save_embedding(make_embedding("sub", {"clip_l": 32}), tmp_path / "sub.pt")
    ok = subprocess.run([sys.executable, str(ROOT / "app.py"), "inspect", str(path), "--json"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0 and json.loads(ok.stdout)["name"] == "sub"
    bad = subprocess.run([sys.executable, str(ROOT / "app.py"), "inspect", str(tmp_path / "nope.pt")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: nope.pt: no such file"


def test_create_still_works_and_lands_in_library(data, capsys):
    from embeddings.library import EmbeddingLibrary

    code, out, _ = run(capsys, "--data-dir", str(data.root), "create", "toycat", "--init-text", "cat", "--vectors", "2",
                       "--format", "pt")
    assert code == 0 and "created" in out
    lib = EmbeddingLibrary(data.embeddings, widths={"clip_l": 32})
    lib.refresh()
    emb = lib.get("toycat")
    assert emb is not None and emb.num_vectors == 2 and emb.metadata["format"] == "a1111-pt"
    code, out, _ = run(capsys, "inspect", str(data.embeddings / "toycat.pt"), "--json")
    assert json.loads(out)["fits"] == ["tiny"]
