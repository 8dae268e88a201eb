"""`app.py generate`: headless text-to-image with the library's embeddings, through `cli.main`."""

from __future__ import annotations

import pytest
from PIL import Image

from cli import main
from embeddings.create import create_embedding
from embeddings.formats import save_embedding


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_uses_library_embedding_and_writes_infotext(data, tiny_model, tmp_path, capsys):
    save_embedding(create_embedding(tiny_model, "gcat", "cat", 2), data.embeddings / "gcat.safetensors")
    out = tmp_path / "out.png"
    code, text, err = run(capsys, "generate", "a photo of gcat", "--model", "tiny", "--data-dir", str(data.root),
                          "--steps", "2", "--seed", "5", "--size", "64x48", "--scheduler", "euler", "-o", str(out))
    assert code == 0, err
    assert "embeddings used: gcat" in text
    with Image.open(out) as img:
        assert img.size == (64, 48)
        params = img.text["parameters"]
    assert params.startswith("a photo of gcat\n") and "Seed: 5" in params and "Sampler: euler" in params
    # same seed and settings -> the same picture (a headless run is reproducible)
    again = tmp_path / "again.png"
    assert run(capsys, "generate", "a photo of gcat", "--data-dir", str(data.root), "--steps", "2", "--seed", "5",
               "--size", "64x48", "--scheduler", "euler", "-o", str(again))[0] == 0
    assert Image.open(out).tobytes() == Image.open(again).tobytes()


def test_generate_refuses_to_overwrite_and_bad_size(data, tmp_path, capsys):
    out = tmp_path / "x.png"
    out.write_bytes(b"keep")
    code, _, err = run(capsys, "generate", "x", "--data-dir", str(data.root), "-o", str(out))
    assert code == 2 and "already exists" in err and out.read_bytes() == b"keep"
    code, _, err = run(capsys, "generate", "x", "--data-dir", str(data.root), "--size", "60x64",
                       "-o", str(tmp_path / "y.png"))
    assert code == 2 and "multiples of 8" in err


@pytest.mark.parametrize("text,size", [("", (None, None)), ("512x768", (512, 768)), ("64", (64, 64))])
def test_parse_size(text, size):
    from cli.generate_cmd import parse_size

    assert parse_size(text) == size
