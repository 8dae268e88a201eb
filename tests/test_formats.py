"""Embedding file formats: bit-exact round trips, A1111-exact files, image embeddings, bad files."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from safetensors import safe_open
from safetensors.torch import save_file

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.formats import FORMATS, export_name, load_embedding, load_embedding_pair, save_embedding
from tests.formats_fixtures import (
    FAMILIES,
    a1111_safe_check,
    make_embedding,
    ref_decode_pixels,
    ref_encode_pixels,
    ref_keys,
)

SUFFIX = {"safetensors": ".safetensors", "pt": ".pt", "diffusers": ".bin", "png": ".png"}


@pytest.mark.parametrize("family,widths", FAMILIES, ids=[f[0] for f in FAMILIES])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_exact(tmp_path, family, widths, fmt):
    emb = make_embedding("foo", widths, n=3)
    path = save_embedding(emb, tmp_path / f"foo{SUFFIX[fmt]}")
    back = load_embedding(path)
    assert back.equal(emb), f"{fmt} changed the vectors"
    assert back.name == "foo"
    assert back.widths == widths
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" and not v.requires_grad
               for v in back.vectors.values())
    if fmt in ("safetensors", "png") or (fmt == "pt" and family != "sdxl"):
        assert back.step == 42
    if fmt in ("safetensors", "png"):  # the formats that carry our metadata
        assert back.metadata["settings"] == {"learn_rate": "0.005", "batch_size": 2}
        assert back.metadata["base_model"] == "sd-test"
    assert len(back.metadata["sha256"]) == 64


def test_diffusers_safetensors_and_format_labels(tmp_path):
    emb = make_embedding("foo", {"clip_l": 768})
    labels = {}
    for fmt, name in [("safetensors", "a.safetensors"), ("pt", "b.pt"), ("diffusers", "c.bin"),
                      ("diffusers", "d.safetensors"), ("png", "e.png")]:
        labels[name] = load_embedding(save_embedding(emb, tmp_path / name, fmt)).metadata["format"]
    assert labels == {"a.safetensors": "safetensors", "b.pt": "a1111-pt", "c.bin": "diffusers-bin",
                      "d.safetensors": "diffusers-safetensors", "e.png": "png-chunk"}


def test_a1111_pt_exact_keys_types_and_safe_loader(tmp_path):
    emb = make_embedding("mine", {"clip_l": 768}, n=4, step=500)
    path = save_embedding(emb, tmp_path / "mine.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert raw["string_to_token"] == {"*": 265}
    t = raw["string_to_param"]["*"]
    assert type(raw["string_to_param"]) is dict and list(raw["string_to_param"]) == ["*"]
    assert t.dtype == torch.float32 and t.device.type == "cpu" and not t.requires_grad and t.shape == (4, 768)
    assert torch.equal(t, emb.vectors["clip_l"])
    assert t.untyped_storage().nbytes() == 4 * 768 * 4  # no shared storage from a larger tensor
    assert raw["name"] == "mine" and raw["step"] == 500 and type(raw["step"]) is int
    assert raw["sd_checkpoint"] == "0123456789" and raw["sd_checkpoint_name"] == "sd-test"
    a1111_safe_check(path)  # A1111's restricted unpickler and zip-name rule accept it


def test_default_torch_zip_would_fail_a1111_check(tmp_path):
    """Why we write the legacy stream: torch's current zip entries are outside A1111's list."""
    path = tmp_path / "zip.pt"
    torch.save({"x": torch.zeros(2)}, path)
    names = zipfile.ZipFile(path).namelist()
    if all(n.split("/", 1)[1] in ("data.pkl", "version", "byteorder", ".data/serialization_id")
           or n.split("/", 1)[1].startswith("data/") for n in names):
        pytest.skip("this torch writes only names A1111 allows")
    with pytest.raises(ValueError, match="bad file inside"):
        a1111_safe_check(path)


def test_sdxl_pt_is_two_plain_tensors(tmp_path):
    emb = make_embedding("xl", {"clip_l": 768, "clip_g": 1280}, n=2)
    path = save_embedding(emb, tmp_path / "xl.pt")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"clip_l", "clip_g"}  # A1111's SDXL branch calls .detach() on every value
    assert raw["clip_l"].shape == (2, 768) and raw["clip_g"].shape == (2, 1280)
    a1111_safe_check(path)


def test_safetensors_layout_and_header(tmp_path):
    sd1 = save_embedding(make_embedding("a", {"clip_l": 768}), tmp_path / "a.safetensors")
    xl = save_embedding(make_embedding("b", {"clip_l": 768, "clip_g": 1280}), tmp_path / "b.safetensors")
    with safe_open(str(sd1), "pt") as f:
        assert list(f.keys()) == ["emb_params"]
        header = f.metadata()
    assert json.loads(header["name"]) == "a" and json.loads(header["step"]) == 42
    assert json.loads(header["settings"])["batch_size"] == 2
    assert "format" not in header and "sha256" not in header  # facts about a read file are not carried on
    with safe_open(str(xl), "pt") as f:
        assert sorted(f.keys()) == ["clip_g", "clip_l"]


def test_foreign_safetensors_header_and_fp16_are_read(tmp_path):
    t = torch.randn(2, 768).half()
    save_file({"emb_params": t}, str(tmp_path / "kohya.safetensors"), metadata={"ss_note": "not json {"})
    emb = load_embedding(tmp_path / "kohya.safetensors")
    assert torch.equal(emb.vectors["clip_l"], t.float())
    assert emb.metadata["ss_note"] == "not json {" and emb.metadata["source_dtype"] == "float16"
    assert emb.name == "kohya"


def test_safetensors_whose_header_length_starts_like_a_pickle_is_read_as_safetensors(tmp_path):
    """The first 8 bytes of a safetensors file are its header's length (a multiple of 8): one
    header in 32 starts with 0x80, a pickle's first byte. Such a file must still read as
    safetensors with its header (a trained per-timestep embedding lost its kind this way)."""
    emb = make_embedding("odd", {"clip_l": 768})
    path = tmp_path / "odd.safetensors"
    emb.metadata["pad"] = ""
    for _ in range(8):  # each padding character makes the header a byte longer (rounded up to 8)
        save_embedding(emb, path)
        length = int.from_bytes(path.read_bytes()[:8], "little")
        if length % 256 == 0x80:
            break
        emb.metadata["pad"] += "x" * ((0x80 - length) % 256)
    assert path.read_bytes()[:1] == b"\x80"
    got = load_embedding(path)
    assert got.metadata["format"] == "safetensors" and got.metadata["pad"] == emb.metadata["pad"]
    assert got.step == emb.step and torch.equal(got.vectors["clip_l"], emb.vectors["clip_l"])


def test_a1111_style_files_read(tmp_path):
    """Files as other tools write them: CUDA-less requires_grad .pt, ParameterDict, 1-D diffusers tensor."""
    t = torch.randn(2, 768)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.nn.Parameter(t.clone())},
                "name": "other-500", "step": 499, "sd_checkpoint": "abc", "sd_checkpoint_name": "m"},
               tmp_path / "renamed.pt")
    e = load_embedding(tmp_path / "renamed.pt")
    assert e.name == "renamed"  # A1111: the file name wins for .pt
    assert e.metadata["stored_name"] == "other-500" and e.step == 499 and not e.vectors["clip_l"].requires_grad
    pd = torch.nn.ParameterDict({"*": torch.nn.Parameter(t.clone())})
    torch.save({"string_to_token": {"*": 265}, "string_to_param": pd, "name": "old", "step": 3}, tmp_path / "old.pt")
    assert torch.equal(load_embedding(tmp_path / "old.pt").vectors["clip_l"], t)
    torch.save({"<cat-toy>": t[0].clone()}, tmp_path / "learned_embeds.bin")
    d = load_embedding(tmp_path / "learned_embeds.bin")
    assert d.num_vectors == 1 and d.metadata["token"] == "<cat-toy>" and d.metadata["format"] == "diffusers-bin"


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"string_to_param": {"*": Evil()}}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(Evil(), f)
    for name in ("evil.pt", "evil.bin"):
        with pytest.raises(EmbeddingFileError, match="refused to load.*unsafe pickle") as exc:
            load_embedding(tmp_path / name)
        assert exc.value.path.name == name and name in str(exc.value)
    assert not marker.exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda d: _write(d / "zero.pt", b""), "empty file"),
        (lambda d: _write(d / "junk.safetensors", b"hello, this is text"), "not an embedding file"),
        (lambda d: _write(d / "trunc.pt", make_pt_bytes()[:60]), "not a readable torch file"),
        (lambda d: _write(d / "trunc.safetensors", make_st_bytes()[:70]), "not a readable safetensors file"),
        (lambda d: _save_pt(d / "ckpt.pt", {"state_dict": {"w": 1}, "epoch": 3}), r"unknown layout: keys \['state_dict'"),
        (lambda d: _save_pt(d / "two.pt", {"string_to_param": {"*": torch.ones(1, 8), "x": torch.ones(1, 8)}}),
         "several terms"),
        (lambda d: _save_st(d / "two.safetensors", {"<a>": torch.ones(1, 8), "<b>": torch.ones(1, 8)}),
         "several terms"),
        (lambda d: _save_st(d / "lora.safetensors", {"down": torch.ones(4, 8), "up": torch.ones(8, 4),
                                                     "alpha": torch.ones(())}), "unknown layout"),
        (lambda d: _save_pt(d / "dims.pt", {"string_to_param": {"*": torch.ones(1, 2, 768)}}),
         r"shape \(1, 2, 768\); expected \[vectors, width\]"),
        (lambda d: _save_pt(d / "ints.pt", {"emb": torch.ones(2, 8, dtype=torch.int64)}), "not floating point"),
        (lambda d: _save_st(d / "rows.safetensors", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(3, 1280)}),
         "disagree on the vector count"),
        (lambda d: _save_pt(d / "empty.pt", {"string_to_param": {"*": torch.ones(0, 768)}}), "no vectors"),
        (lambda d: _save_png_plain(d / "photo.png"), "no embedding in this image"),
        (lambda d: _save_png_black_bars(d / "bars.png"), "do not decode"),
        (lambda d: d / "missing.pt", "no such file"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_bad_files_give_clear_errors(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(EmbeddingFileError, match=reason) as exc:
        load_embedding(path)
    assert exc.value.path == path
    assert str(exc.value).startswith(path.name + ": ")


def make_pt_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    torch.save({"string_to_param": {"*": torch.ones(4, 768)}}, buf)
    return buf.getvalue()


def make_st_bytes() -> bytes:
    from safetensors.torch import save

    return save({"emb_params": torch.ones(4, 768)})


def _save_pt(path, obj):
    torch.save(obj, path)
    return path


def _save_st(path, tensors):
    save_file(tensors, str(path))
    return path


def _save_png_plain(path):
    Image.fromarray(np.random.default_rng(0).integers(1, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


def _save_png_black_bars(path):
    arr = np.random.default_rng(0).integers(1, 255, (64, 64, 3), dtype=np.uint8)
    arr[:, 10] = 0
    arr[:, 50] = 0  # two all-black columns look like separators (A1111's known false positive)
    Image.fromarray(arr).save(path)
    return path


def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.pt"
    torch.save({"emb_params": torch.ones(1, 8)}, path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: use a file the kernel refuses to read
            path = Path("/proc/self/mem")
            if not path.exists():
                pytest.skip("no unreadable file available")
        with pytest.raises(EmbeddingFileError, match="cannot read the file") as exc:
            load_embedding(path)
        assert exc.value.path == path
    finally:
        (tmp_path / "locked.pt").chmod(0o644)


def test_nan_loads_but_is_flagged(tmp_path):
    emb = make_embedding("broken", {"clip_l": 32})
    emb.vectors["clip_l"][1, 3] = float("nan")
    emb.vectors["clip_l"][2, 0] = float("inf")
    for fmt in FORMATS:
        back = load_embedding(save_embedding(emb, tmp_path / f"broken{SUFFIX[fmt]}"))
        assert not back.is_finite()
        assert torch.equal(torch.isnan(back.vectors["clip_l"]), torch.isnan(emb.vectors["clip_l"]))


# ---------------------------------------------------------------- image embeddings
def test_png_layout_matches_reference(tmp_path):
    emb = make_embedding("rick", {"clip_l": 768}, n=8)
    picture = Image.new("RGB", (120, 100), (200, 180, 40))
    path = save_embedding(emb, tmp_path / "rick.png", preview=picture)
    img = Image.open(path)
    assert img.format == "PNG" and img.size[1] == 100
    raw_chunk = img.text["sd-ti-embedding"]
    payload = json.loads(base64.b64decode(raw_chunk))
    assert set(payload) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert payload["name"] == "rick" and payload["step"] == 42 and payload["string_to_token"] == {"*": 265}
    assert torch.equal(torch.tensor(payload["string_to_param"]["*"]["TORCHTENSOR"]), emb.vectors["clip_l"])
    # Two blocks of equal width W around the picture, separated by pure-black columns.
    w = (img.size[0] - 120 - 2) // 2
    arr = np.asarray(img.convert("RGB"))
    assert img.size[0] == 2 * w + 2 + 120
    assert not arr[:, w].any() and not arr[:, w + 1 + 120].any()
    # An independent decoder written from A1111's source reads the pixels.
    decoded = ref_decode_pixels(img)
    assert torch.equal(decoded["string_to_param"]["*"], emb.vectors["clip_l"]) and decoded["name"] == "rick"


def test_key_stream_matches_reference():
    from embeddings.formats.png_embed import lcg_keys

    # A1111's key stream starts with the raw values 253, 242, 127, 44, 157, 27, 239, 133, 38, 79
    assert lcg_keys(10).tolist() == [13, 2, 15, 12, 13, 11, 15, 5, 6, 15]
    assert lcg_keys(5000).tolist() == ref_keys(5000).tolist()


def test_png_written_by_reference_encoder_reads(tmp_path):
    """A pixel-only image from an encoder written from A1111's source (as A1111 writes them)."""
    t = torch.randn(3, 768)
    payload = {"string_to_token": {"*": 265}, "string_to_param": {"*": t}, "name": "a1111-made",
               "step": 60, "sd_checkpoint": "abcdef1234", "sd_checkpoint_name": "v1-5"}
    picture = Image.fromarray(np.random.default_rng(1).integers(16, 255, (96, 80, 3), dtype=np.uint8))
    ref_encode_pixels(picture, payload).save(tmp_path / "upload-renamed.png")
    emb = load_embedding(tmp_path / "upload-renamed.png")
    assert emb.name == "a1111-made"  # the name inside wins for images
    assert emb.step == 60 and emb.metadata["base_model_hash"] == "abcdef1234"
    assert torch.equal(emb.vectors["clip_l"], t) and emb.metadata["format"] == "png-pixels"


@pytest.mark.parametrize("family,widths", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_png_survives_metadata_stripping_and_webp(tmp_path, family, widths):
    emb = make_embedding("kept", widths, n=2, step=7)
    path = save_embedding(emb, tmp_path / "kept.png")
    with Image.open(path) as im:
        pixels = im.convert("RGB")
    stripped = tmp_path / "stripped.png"
    pixels.save(stripped)  # no text chunks: what image hosts do
    assert "sd-ti-embedding" not in Image.open(stripped).text
    back = load_embedding(stripped)
    assert back.equal(emb) and back.metadata["format"] == "png-pixels"
    # SD1/SD2 carry the name and step in the pixels too; SDXL's A1111-readable payload has only tensors.
    assert (back.name, back.step) == (("kept", 7) if family != "sdxl" else ("stripped", 0))
    pixels.save(tmp_path / "kept.webp", lossless=True)
    webp = load_embedding(tmp_path / "kept.webp")
    assert webp.equal(emb) and webp.metadata["format"] == "webp-pixels"


def test_sdxl_png_payload_is_a1111_readable(tmp_path):
    emb = make_embedding("xl", {"clip_l": 768, "clip_g": 1280}, n=2)
    img = Image.open(save_embedding(emb, tmp_path / "xl.png"))
    payload = json.loads(base64.b64decode(img.text["sd-ti-embedding"]))
    assert set(payload) == {"clip_l", "clip_g"}  # every value a tensor: A1111's SDXL branch
    info = json.loads(base64.b64decode(img.text["sd-ti-embedding-info"]))
    assert info["name"] == "xl" and info["step"] == 42


def test_corrupt_chunk_falls_back_to_pixels(tmp_path):
    emb = make_embedding("p", {"clip_l": 32})
    with Image.open(save_embedding(emb, tmp_path / "p.png")) as im:
        pixels = im.convert("RGB")
    info = PngInfo()
    info.add_text("sd-ti-embedding", "not base64 json!!")
    pixels.save(tmp_path / "bad-chunk.png", pnginfo=info)
    back = load_embedding(tmp_path / "bad-chunk.png")
    assert back.equal(emb) and back.metadata["format"] == "png-pixels"


def test_png_with_user_preview_and_no_caption(tmp_path):
    emb = make_embedding("cap", {"clip_l": 32})
    preview = Image.new("RGB", (64, 48), (10, 200, 30))
    plain = Image.open(save_embedding(emb, tmp_path / "plain.png", preview=preview, caption=False)).convert("RGB")
    capped = Image.open(save_embedding(emb, tmp_path / "capped.png", preview=preview)).convert("RGB")
    w = (plain.size[0] - 64 - 2) // 2
    middle = np.asarray(plain)[:, w + 1 : w + 65]
    assert (middle == np.array([10, 200, 30])).all()  # the preview itself, untouched
    assert not np.array_equal(np.asarray(capped)[:, w + 1 : w + 65], middle)  # captioned and darkened


# ---------------------------------------------------------------- diffusers pair, names, paths
def test_sdxl_diffusers_pair(tmp_path):
    emb = make_embedding("xl", {"clip_l": 768, "clip_g": 1280}, n=2)
    first = save_embedding(emb, tmp_path / "xl.bin", "diffusers")
    second = tmp_path / "xl_2.bin"
    assert first == tmp_path / "xl.bin" and second.is_file()
    raw_l = torch.load(first, weights_only=True)
    raw_g = torch.load(second, weights_only=True)
    assert list(raw_l) == ["xl"] and list(raw_g) == ["xl"]
    assert raw_l["xl"].shape == (2, 768) and raw_g["xl"].shape == (2, 1280)
    assert load_embedding(first).equal(emb)
    assert load_embedding_pair(first, second).equal(emb)
    with pytest.raises(EmbeddingFileError, match="second half .* SDXL pair with xl.bin"):
        load_embedding(second)
    with pytest.raises(EmbeddingFileError, match="not an SDXL pair"):
        load_embedding_pair(second, first)


def test_unrelated_underscore_2_file_is_not_a_pair(tmp_path):
    save_embedding(make_embedding("cat", {"clip_l": 768}), tmp_path / "cat.bin", "diffusers")
    save_embedding(make_embedding("cat_2", {"clip_l": 768}, seed=5), tmp_path / "cat_2.bin", "diffusers")
    assert load_embedding(tmp_path / "cat.bin").widths == {"clip_l": 768}
    assert load_embedding(tmp_path / "cat_2.bin").widths == {"clip_l": 768}


def test_export_names_and_suffix_rules(tmp_path):
    emb = make_embedding("my style", {"clip_l": 32})
    assert [export_name(emb, f) for f in FORMATS] == ["my style.safetensors", "my style.pt", "my style.bin",
                                                       "my style.png"]
    with pytest.raises(EmbeddingError, match="must end in"):
        save_embedding(emb, tmp_path / "x.pt", "safetensors")
    with pytest.raises(EmbeddingError, match="cannot tell the format"):
        save_embedding(emb, tmp_path / "x.txt")
    with pytest.raises(EmbeddingError, match="unknown format"):
        export_name(emb, "ckpt")
    assert save_embedding(emb, tmp_path / "noext", "pt") == tmp_path / "noext.pt"


def test_mislabelled_file_is_read_by_content(tmp_path):
    emb = make_embedding("m", {"clip_l": 32})
    data = save_embedding(emb, tmp_path / "real.safetensors").read_bytes()
    (tmp_path / "wrong.pt").write_bytes(data)
    assert load_embedding(tmp_path / "wrong.pt").equal(emb)


def test_failed_write_keeps_old_file(tmp_path):
    good = make_embedding("keep", {"clip_l": 32})
    path = save_embedding(good, tmp_path / "keep.safetensors")
    bad = Embedding("keep", {"clip_l": torch.ones(1, 32), "clip_h": torch.ones(1, 1024)})
    with pytest.raises(EmbeddingError, match="only one encoder or clip_l"):
        save_embedding(bad, path)
    assert load_embedding(path).equal(good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]  # no temp files left


def test_suffix_completion_when_format_is_named(tmp_path):
    emb = make_embedding("v1.5-style", {"clip_l": 32})
    assert save_embedding(emb, tmp_path / "v1.5-style", "safetensors") == tmp_path / "v1.5-style.safetensors"
    assert save_embedding(emb, tmp_path / "run.diffusers", "diffusers") == tmp_path / "run.bin"
    assert load_embedding(tmp_path / "v1.5-style.safetensors").name == "v1.5-style"
