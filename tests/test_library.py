"""The embeddings library: rescans without restart, deterministic clashes, every skip explained."""

from __future__ import annotations

import os

import pytest
import torch

from embeddings.embedding import EmbeddingError, EmbeddingFileError
from embeddings.formats import load_embedding, save_embedding
from embeddings.library import EmbeddingLibrary
from tests.formats_fixtures import make_embedding

TINY = {"clip_l": 32}


def by_path(lib: EmbeddingLibrary, folder) -> dict[str, object]:
    return {e.path.relative_to(folder).as_posix(): e for e in lib.entries()}


def bump_mtime(path, seconds: int = 10) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 1_000_000_000))


def test_refresh_sees_add_change_delete(tmp_path):
    lib = EmbeddingLibrary(tmp_path, widths=TINY)
    lib.refresh()
    assert lib.entries() == []
    a = save_embedding(make_embedding("a", TINY, seed=1), tmp_path / "a.safetensors")
    lib.refresh()
    first = lib.get("a")
    assert first is not None and first.equal(make_embedding("a", TINY, seed=1))
    lib.refresh()
    assert lib.get("a") is first  # unchanged file: not re-read
    save_embedding(make_embedding("a", TINY, seed=2), a)
    bump_mtime(a)
    lib.refresh()
    assert lib.get("a").equal(make_embedding("a", TINY, seed=2))
    sub = tmp_path / "sub" / "deeper"
    save_embedding(make_embedding("b", TINY), sub / "b.pt")
    lib.refresh()
    assert set(lib.loaded()) == {"a", "b"}
    a.unlink()
    lib.refresh()
    assert set(lib.loaded()) == {"b"} and lib.get("a") is None


def test_ignores_hidden_temp_preview_and_other_files(tmp_path):
    save_embedding(make_embedding("real", TINY), tmp_path / "real.safetensors")
    (tmp_path / ".real.safetensors.abc.tmp").write_bytes(b"partial")
    (tmp_path / "real.preview.png").write_bytes(b"not even a png")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "real.pt.optim").write_bytes(b"x")
    (tmp_path / ".trash").mkdir()
    save_embedding(make_embedding("gone", TINY), tmp_path / ".trash" / "gone.pt")
    lib = EmbeddingLibrary(tmp_path)
    lib.refresh()
    assert [e.name for e in lib.entries()] == ["real"]


def test_name_clash_is_deterministic(tmp_path):
    save_embedding(make_embedding("style", TINY, seed=1), tmp_path / "b" / "style.pt")
    save_embedding(make_embedding("style", TINY, seed=2), tmp_path / "a" / "style.safetensors")
    save_embedding(make_embedding("Style", TINY, seed=3), tmp_path / "a" / "Style.pt")
    lib = EmbeddingLibrary(tmp_path, widths=TINY)
    lib.refresh()
    entries = by_path(lib, tmp_path)
    # Same depth: the first path in sorted order wins ("a/Style.pt" < "a/style.safetensors" < "b/...").
    assert entries["a/Style.pt"].ok
    assert entries["a/style.safetensors"].reason == "name clash with a/Style.pt"
    assert entries["b/style.pt"].reason == "name clash with a/Style.pt"
    assert lib.get("style").equal(make_embedding("x", TINY, seed=3))  # case-insensitive, like prompts
    # A file at the top level beats any subfolder.
    save_embedding(make_embedding("STYLE", TINY, seed=4), tmp_path / "STYLE.safetensors")
    lib.refresh()
    entries = by_path(lib, tmp_path)
    assert entries["STYLE.safetensors"].ok and entries["a/Style.pt"].reason == "name clash with STYLE.safetensors"
    assert any("a/Style.pt" in w for w in entries["STYLE.safetensors"].warnings)
    assert list(lib.loaded()) == ["STYLE"]


def test_skip_reasons(tmp_path):
    save_embedding(make_embedding("good", TINY), tmp_path / "good.pt")
    save_embedding(make_embedding("wide", {"clip_l": 768}), tmp_path / "wide.safetensors")
    save_embedding(make_embedding("xl", {"clip_l": 768, "clip_g": 1280}), tmp_path / "xl.safetensors")
    nan = make_embedding("nan", TINY)
    nan.vectors["clip_l"][0, 0] = float("nan")
    save_embedding(nan, tmp_path / "nan.safetensors")
    torch.save({"string_to_param": {"*": torch.ones(1, 32), "x": torch.ones(1, 32)}}, tmp_path / "multi.pt")
    torch.save({"state_dict": {}, "epoch": 1}, tmp_path / "model.ckpt.pt")
    (tmp_path / "zero.bin").write_bytes(b"")
    lib = EmbeddingLibrary(tmp_path, widths=TINY)
    lib.refresh()
    reasons = {e.path.name: e.reason for e in lib.entries()}
    assert reasons["good.pt"] is None
    assert reasons["wide.safetensors"] == "width clip_l 768 does not match the model's clip_l 32"
    assert reasons["xl.safetensors"] == "width clip_l 768 + clip_g 1280 does not match the model's clip_l 32"
    assert reasons["nan.safetensors"] == "contains NaN/inf"
    assert "several terms" in reasons["multi.pt"]
    assert reasons["model.ckpt.pt"].startswith("unknown layout")
    assert reasons["zero.bin"] == "empty file (0 bytes)"
    assert [e.name for e in lib.skipped()] and set(lib.loaded()) == {"good"}
    # The same folder against an SDXL model: only the SDXL file fits.
    lib.set_model({"clip_l": 768, "clip_g": 1280})
    assert set(lib.loaded()) == {"xl"}


def test_shadowing_and_bad_names_with_tokenizer(tmp_path, tiny_model):
    tok = tiny_model.tokenizers[0]
    save_embedding(make_embedding("name-200", TINY), tmp_path / "name-200.pt")
    save_embedding(make_embedding("name-2000", TINY), tmp_path / "name-2000.pt")
    save_embedding(make_embedding("x", TINY), tmp_path / "bad$name.pt")
    lib = EmbeddingLibrary(tmp_path, widths=TINY, tokenizer=tok)
    lib.refresh()
    assert lib.shadowing() == [("name-200", "name-2000")]
    entries = {e.name: e for e in lib.entries()}
    assert any("name-2000" in w for w in entries["name-200"].warnings)
    assert entries["bad$name"].status == "skipped" and "characters" in entries["bad$name"].reason


def test_sdxl_diffusers_pair_is_one_entry(tmp_path):
    xl = {"clip_l": 768, "clip_g": 1280}
    save_embedding(make_embedding("xl", xl), tmp_path / "xl.bin", "diffusers")
    lib = EmbeddingLibrary(tmp_path, widths=xl)
    lib.refresh()
    entries = by_path(lib, tmp_path)
    assert entries["xl.bin"].ok and entries["xl.bin"].family == "sdxl"
    assert "SDXL pair with xl.bin" in entries["xl_2.bin"].reason
    # Replacing the second half alone is noticed (the pair is re-read).
    save_embedding(make_embedding("xl", xl, seed=9), tmp_path / "tmp.bin", "diffusers")
    os.replace(tmp_path / "tmp_2.bin", tmp_path / "xl_2.bin")
    (tmp_path / "tmp.bin").unlink()
    bump_mtime(tmp_path / "xl_2.bin")
    lib.refresh()
    assert torch.equal(lib.get("xl").vectors["clip_g"], make_embedding("xl", xl, seed=9).vectors["clip_g"])
    assert torch.equal(lib.get("xl").vectors["clip_l"], make_embedding("xl", xl).vectors["clip_l"])


def test_rename_files_and_images(tmp_path):
    save_embedding(make_embedding("one", TINY), tmp_path / "one.safetensors")
    save_embedding(make_embedding("pic", TINY, seed=4), tmp_path / "sub" / "pic.png")
    save_embedding(make_embedding("taken", TINY), tmp_path / "taken.pt")
    lib = EmbeddingLibrary(tmp_path, widths=TINY)
    lib.refresh()
    entry = lib.rename("one", "uno")
    assert entry.ok and entry.path == tmp_path / "uno.safetensors" and not (tmp_path / "one.safetensors").exists()
    assert lib.get("uno").equal(make_embedding("x", TINY))
    entry = lib.rename("pic", "picture")
    assert entry.path == tmp_path / "sub" / "picture.png" and not (tmp_path / "sub" / "pic.png").exists()
    back = load_embedding(entry.path)
    assert back.name == "picture" and back.equal(make_embedding("x", TINY, seed=4))
    with pytest.raises(EmbeddingError, match="already used by taken.pt"):
        lib.rename("uno", "TAKEN")
    with pytest.raises(EmbeddingError, match="no embedding called"):
        lib.rename("nothing", "x")
    assert set(lib.loaded()) == {"uno", "picture", "taken"}


def test_delete_moves_to_trash(tmp_path):
    save_embedding(make_embedding("bye", {"clip_l": 768, "clip_g": 1280}), tmp_path / "bye.bin", "diffusers")
    lib = EmbeddingLibrary(tmp_path)
    lib.refresh()
    moved = lib.delete("bye")
    assert sorted(p.name.split("-", 2)[-1] for p in moved) == ["bye.bin", "bye_2.bin"]
    assert all(p.parent == tmp_path / ".trash" and p.is_file() for p in moved)
    assert lib.entries() == [] and not (tmp_path / "bye.bin").exists()


def test_add_file_validates_and_refuses_overwrite(tmp_path):
    lib_dir, uploads = tmp_path / "lib", tmp_path / "uploads"
    lib = EmbeddingLibrary(lib_dir, widths=TINY)
    up = save_embedding(make_embedding("new", TINY), uploads / "new.pt")
    entry = lib.add_file(up)
    assert entry.ok and entry.path == lib_dir / "new.pt" and lib.get("new") is not None
    with pytest.raises(EmbeddingError, match="already exists"):
        lib.add_file(up)
    newer = save_embedding(make_embedding("new", TINY, seed=7), uploads / "v2" / "new.pt")
    lib.add_file(newer, overwrite=True)
    assert lib.get("new").equal(make_embedding("x", TINY, seed=7))
    # Same name, different file: refused whatever the flag.
    other = save_embedding(make_embedding("new", TINY), uploads / "new.safetensors")
    with pytest.raises(EmbeddingError, match="called 'new' already exists"):
        lib.add_file(other, overwrite=True)
    # Broken uploads name the uploaded file and the reason; nothing is copied.
    (uploads / "tmp123.pt").write_bytes(b"")
    with pytest.raises(EmbeddingFileError, match="tmp123.pt: empty file"):
        lib.add_file(uploads / "tmp123.pt", filename="nice.pt")
    nan = make_embedding("nan", TINY)
    nan.vectors["clip_l"][0, 0] = float("inf")
    with pytest.raises(EmbeddingFileError, match="NaN/inf"):
        lib.add_file(save_embedding(nan, uploads / "nan.pt"))
    # An upload under a temp name gets the name asked for; one that does not fit is added but skipped.
    wide = save_embedding(make_embedding("w", {"clip_l": 768}), uploads / "gradio-tmp-xyz.safetensors")
    entry = lib.add_file(wide, filename="wide.safetensors")
    assert entry.name == "wide" and entry.status == "skipped" and "768" in entry.reason
    assert sorted(p.name for p in lib_dir.iterdir()) == ["new.pt", "wide.safetensors"]


def test_rename_image_keeps_its_picture_even_with_black_margins(tmp_path):
    import numpy as np
    from PIL import Image

    preview = Image.fromarray(np.random.default_rng(3).integers(20, 250, (40, 30, 3), dtype=np.uint8))
    src = save_embedding(make_embedding("framed", TINY), tmp_path / "x.png", preview=preview, caption=False)
    with Image.open(src) as im:
        framed = Image.new("RGB", (im.size[0] + 10, im.size[1] + 10))
        framed.paste(im.convert("RGB"), (5, 5))  # black margins, no text chunks
    framed.save(tmp_path / "framed.png")
    src.unlink()
    lib = EmbeddingLibrary(tmp_path, widths=TINY)
    lib.refresh()
    entry = lib.rename("framed", "reframed")
    out = Image.open(entry.path).convert("RGB")
    w = (out.size[0] - 30 - 2) // 2
    assert np.array_equal(np.asarray(out)[:, w + 1 : w + 31], np.asarray(preview))
    assert load_embedding(entry.path).name == "reframed"
