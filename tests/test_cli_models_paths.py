"""`create`, `inspect`, `convert` and `models` through the real CLI on each kind of base model.

Issue 2 promises they work on the built-in `tiny`, on a diffusers folder and on a single-file
checkpoint, all offline. Each created embedding must hold exactly the token rows of the model it
was made from and record that model's hash, whatever path the model came in by.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from cli import main
from embeddings.families import BUILTIN_MODELS
from embeddings.formats import FORMATS, load_embedding
from models.load import load_base_model
from models.tiny import ensure_tiny_model

INIT_TEXT = "red cat"  # two CLIP tokens: with --vectors 2 each vector is one token's row


@pytest.fixture
def model_paths(data, tiny_model) -> dict[str, str]:
    """The `--model` values: the built-in name, a diffusers folder and a single file in data/models."""
    from models.ldm_convert import save_single_file

    shutil.copytree(ensure_tiny_model(data.cache), data.models / "my-tiny")
    save_single_file(tiny_model, data.models / "tiny-file.safetensors")
    return {"builtin": "tiny", "folder": "my-tiny", "single-file": "tiny-file.safetensors"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def token_rows(model, text: str) -> torch.Tensor:
    """The model's own embedding-table rows for the words of `text` (computed without our create code)."""
    tok = model.tokenizers[0]
    ids = tok(text, add_special_tokens=False).input_ids
    return model.text_encoders[0].get_input_embeddings().weight[ids].detach().float()


def expected_hash(data, kind: str, spec: str) -> str:
    """The hash the embedding must record: for a single file, the first 10 hex of its SHA-256."""
    if kind == "single-file":
        return hashlib.sha256((data.models / spec).read_bytes()).hexdigest()[:10]
    return load_base_model(spec, data).short_hash


@pytest.mark.parametrize("kind", ["builtin", "folder", "single-file"])
def test_create_inspect_convert_on_each_model_kind(data, model_paths, capsys, kind, tmp_path):
    spec = model_paths[kind]
    dd = ["--data-dir", str(data.root)]
    code, out, err = run(capsys, *dd, "create", "toycat", "--init-text", INIT_TEXT, "--vectors", "2",
                         "--model", spec)
    assert code == 0, err
    created = data.embeddings / "toycat.safetensors"
    assert f"created {created}" in out
    emb = load_embedding(created)

    model = load_base_model(spec, data)  # loaded independently of the CLI run
    rows = token_rows(model, INIT_TEXT)
    assert rows.shape == (2, 32)
    assert torch.equal(emb.vectors["clip_l"], rows)
    want_hash = expected_hash(data, kind, spec)
    assert emb.metadata["base_model_hash"] == want_hash == model.short_hash
    assert emb.metadata["base_model"] == model.name

    code, out, _ = run(capsys, "inspect", str(created), "--json")
    report = json.loads(out)
    assert code == 0 and report["fits"] == ["tiny"] and report["vectors"] == 2
    assert report["metadata"]["base_model_hash"] == want_hash
    assert report["norms"]["clip_l"] == pytest.approx(rows.norm(dim=1).tolist(), abs=1e-6)  # shown to 6 places

    for fmt in FORMATS:
        code, out, err = run(capsys, "convert", str(created), "--to", fmt, "-o", str(tmp_path / fmt) + "/")
        assert code == 0, err
        written = Path(out.split()[1])
        back = load_embedding(written)
        assert torch.equal(back.vectors["clip_l"], rows), fmt
        if fmt != "diffusers":  # diffusers' {token: tensor} has no room for the model hash
            assert back.metadata["base_model_hash"] == want_hash, fmt


def test_hashes_tell_models_apart(data, model_paths):
    """A copied folder is the same model as the built-in (same weights, same hash); the single file is
    another file and hashes differently, so an embedding says which checkpoint it was made on."""
    hashes = {k: load_base_model(spec, data).short_hash for k, spec in model_paths.items()}
    assert hashes["folder"] == hashes["builtin"]
    assert hashes["single-file"] != hashes["builtin"]


def test_models_json_lists_folder_and_file(data, model_paths, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    code, out, _ = run(capsys, "--data-dir", str(data.root), "models", "--json")
    assert code == 0
    listed = {m["name"]: m for m in json.loads(out)}
    assert set(listed) == {*BUILTIN_MODELS, "my-tiny", "tiny-file.safetensors"}
    assert {"tiny", "tiny-sdxl", "tiny-sd2v", "toy"} <= set(BUILTIN_MODELS)
    assert (listed["my-tiny"]["kind"], listed["my-tiny"]["family"]) == ("diffusers", "sd1")
    single = listed["tiny-file.safetensors"]
    assert (single["kind"], single["family"]) == ("single-file", "sd1")
    assert single["size"] == (data.models / "tiny-file.safetensors").stat().st_size
    # every listed spec is something `create --model` accepts
    for name in ("my-tiny", "tiny-file.safetensors"):
        code, _, err = run(capsys, "--data-dir", str(data.root), "create", f"e-{name[:4]}", "--model",
                           listed[name]["spec"])
        assert code == 0, err


def test_bad_model_paths_are_one_line_errors(data, capsys):
    (data.models / "notes.txt").write_text("not a model")
    (data.models / "empty-folder").mkdir()
    (data.models / "junk.safetensors").write_bytes(b"\x00" * 64)
    dd = ["--data-dir", str(data.root)]
    for spec, expect in [("notes.txt", "not a checkpoint"), ("empty-folder", "no model_index.json"),
                         ("junk.safetensors", "junk.safetensors"), ("./nowhere", "no such model")]:
        code, out, err = run(capsys, *dd, "create", "x", "--model", spec)
        assert code == 2 and out == "" and expect in err, (spec, err)
        assert len(err.strip().splitlines()) == 1
    assert not list(data.embeddings.iterdir())
