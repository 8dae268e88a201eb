"""The CLI with embedding kinds: create a per-layer embedding (from init text or a standard one),
inspect it, convert it (the standard part, said so), generate with style mixing."""

from __future__ import annotations

import json

import torch
from PIL import Image

from cli import main
from embeddings.create import create_embedding
from embeddings.formats import load_embedding, save_embedding


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_inspect_convert_per_layer(data, tiny_model, tmp_path, capsys):
    code, text, err = run(capsys, "create", "plcat", "--init-text", "cat", "--vectors", "2", "--kind", "per-layer",
                          "--grouping", "stage", "--data-dir", str(data.root))
    assert code == 0, err
    assert "kind: Per-layer" in text and "groups: 3" in text
    emb = load_embedding(data.embeddings / "plcat.safetensors")
    assert emb.kind == "per-layer" and emb.parts["clip_l"].shape == (3, 2, 32)
    assert emb.kind_info["groups"] == ["down", "mid", "up"]

    code, text, _ = run(capsys, "inspect", str(data.embeddings / "plcat.safetensors"))
    assert code == 0 and "kind:     per-layer" in text and "grouping: stage" in text
    code, text, _ = run(capsys, "inspect", str(data.embeddings / "plcat.safetensors"), "--json")
    report = json.loads(text)
    assert report["kind"] == "per-layer" and len(report["kind_details"]["group_norms"]["clip_l"]) == 3

    out = tmp_path / "plcat.pt"
    code, text, _ = run(capsys, "convert", str(data.embeddings / "plcat.safetensors"), "--to", "pt", "-o", str(out))
    assert code == 0 and "standard part" in text
    assert torch.equal(load_embedding(out).vectors["clip_l"], emb.vectors["clip_l"])


def test_create_from_a_standard_embedding(data, tiny_model, capsys):
    std = create_embedding(tiny_model, "base", "dog", 3)
    save_embedding(std, data.embeddings / "base.safetensors")
    code, text, err = run(capsys, "create", "fromdog", "--kind", "per-layer", "--from", "base",
                          "--data-dir", str(data.root))
    assert code == 0, err
    assert "starting from base" in text
    emb = load_embedding(data.embeddings / "fromdog.safetensors")
    assert emb.kind_info["grouping"] == "block" and emb.parts["clip_l"].shape == (16, 3, 32)
    assert all(torch.equal(g, std.vectors["clip_l"]) for g in emb.parts["clip_l"])
    code, _, err = run(capsys, "create", "again", "--kind", "per-layer", "--from", "fromdog",
                       "--data-dir", str(data.root))
    assert code != 0 and "--from fromdog: fromdog is a per-layer embedding; start from a standard one" in err
    code, _, err = run(capsys, "create", "nope", "--kind", "per-layer", "--format", "pt", "--data-dir", str(data.root))
    assert code != 0 and "safetensors" in err


def test_generate_style_mix_row(data, tiny_model, tmp_path, capsys):
    from embeddings.kinds import PER_LAYER

    obj = PER_LAYER.make(create_embedding(tiny_model, "obj", "cat", 2), tiny_model.unet)
    save_embedding(obj, data.embeddings / "obj.safetensors")
    save_embedding(create_embedding(tiny_model, "sty", "painting", 2), data.embeddings / "sty.safetensors")
    out = tmp_path / "row.png"
    code, text, err = run(capsys, "generate", "a photo of obj", "--style-mix", "obj", "sty", "--splits", "0,4,8",
                          "--steps", "1", "--size", "64x64", "--data-dir", str(data.root), "-o", str(out))
    assert code == 0, err
    assert "N = 0, 4, 8" in text
    with Image.open(out) as img:
        assert img.size == (3 * 64, 64) and "Style mix: obj inner / sty outer" in img.text["parameters"]
        left, right = img.crop((0, 0, 64, 64)).tobytes(), img.crop((128, 0, 192, 64)).tobytes()
    assert left != right  # the mix changes the image along the row
    code, _, err = run(capsys, "generate", "a photo", "--style-mix", "obj", "sty", "--data-dir", str(data.root),
                       "-o", str(tmp_path / "x.png"))
    assert code != 0 and "does not name 'obj'" in err


def test_create_with_a_chosen_standard_part(data, tiny_model, capsys):
    code, _, err = run(capsys, "create", "midpart", "--kind", "per-layer", "--grouping", "stage", "--standard-part",
                       "mid", "--data-dir", str(data.root))
    assert code == 0, err
    emb = load_embedding(data.embeddings / "midpart.safetensors")
    assert emb.kind_info["standard"] == "mid" and torch.equal(emb.vectors["clip_l"], emb.parts["clip_l"][1])
    code, _, err = run(capsys, "create", "badpart", "--kind", "per-layer", "--grouping", "stage", "--standard-part",
                       "nowhere", "--data-dir", str(data.root))
    assert code != 0 and "standard part 'nowhere'" in err and "down, mid, up" in err
