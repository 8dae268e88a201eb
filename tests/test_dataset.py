"""Training dataset: scan, captions, prompts, buckets, pixels, alpha weights, check, sampler."""

import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.dataset import (
    DataError,
    DataOptions,
    EpochSampler,
    ImageRecord,
    PromptBuilder,
    alpha_weight,
    bucket_params,
    bucket_sizes,
    caption_from_filename,
    check_dataset,
    choose_bucket,
    load_pixels,
    scan_dataset,
)


def _save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def _stripes(w: int, h: int, colours) -> Image.Image:
    """Vertical stripes of equal width, one per colour."""
    arr = np.zeros((h, w, 3), np.uint8)
    k = len(colours)
    for i, c in enumerate(colours):
        arr[:, i * w // k : (i + 1) * w // k] = c
    return Image.fromarray(arr)


def _rgba(w: int, h: int, alpha: np.ndarray, colour=(200, 30, 30)) -> Image.Image:
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = colour
    arr[..., 3] = alpha
    return Image.fromarray(arr, "RGBA")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer

    return load_clip_tokenizer(write_clip_tokenizer(tmp_path_factory.mktemp("tok")))


# --- captions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stem,regex,join,expected",
    [
        ("001-02 a cat, sitting", "", " ", "a cat, sitting"),
        ("--12cat on grass", "", " ", "cat on grass"),
        ("12 34 dog", "", " ", "34 dog"),  # only the first run of digits/dashes and its space
        ("no numbers 5", "", " ", "no numbers 5"),
        ("007-red_car_parked", r"[a-z]+", " ", "red car parked"),
        ("007-red_car_parked", r"[a-z]+", ", ", "red, car, parked"),
        # capture groups: A1111 crashed here; we join the groups
        ("red_car_parked", r"(\w)[a-z]*_?", "", "rcp"),
        ("red-car", r"(\w+)-(\w+)", "+", "red+car"),
        ("x", r"(a)?x", "+", ""),  # an unmatched optional group adds nothing
    ],
)
def test_caption_from_filename(stem, regex, join, expected):
    assert caption_from_filename(stem, regex, join) == expected


def test_bad_regex_is_a_clear_error():
    with pytest.raises(DataError, match="filename_regex"):
        caption_from_filename("a", "(unclosed")
    with pytest.raises(DataError, match="filename_regex"):
        DataOptions(filename_regex="[").validate()


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"repeats": 0}, "repeats"),
        ({"resolution": 100}, "resolution"),
        ({"tag_dropout": 1.5}, "tag_dropout"),
        ({"flip_p": -0.1}, "flip_p"),
        ({"keep_tags": -1}, "keep_tags"),
        ({"bucket_step": 12}, "bucket_step"),
        ({"min_bucket": 2048}, "min_bucket"),
        ({"repeats": 1.5}, "repeats"),
    ],
)
def test_options_validation_names_the_field(kw, key):
    with pytest.raises(DataError, match=f"^{key}:"):
        DataOptions(**kw).validate()


# --- scanning ---------------------------------------------------------------------------------


@pytest.fixture
def messy(tmp_path) -> Path:
    root = tmp_path / "ds"
    _save(root / "a.png", _stripes(64, 64, [(255, 0, 0)]))
    (root / "a.txt").write_text("  a red   square,\n plain \n", encoding="utf-8")
    _save(root / "sub" / "deeper" / "002-dog running.jpg", _stripes(80, 64, [(0, 255, 0)]))
    _save(root / "sub" / "latin.png", _stripes(64, 64, [(0, 0, 255)]))
    (root / "sub" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.pdf").write_bytes(b"%PDF")
    (root / "lonely.txt").write_text("caption without image", encoding="utf-8")
    _save(root / ".hidden.png", _stripes(64, 64, [(9, 9, 9)]))
    _save(root / ".cache" / "x.png", _stripes(64, 64, [(9, 9, 9)]))
    return root


def test_scan_is_recursive_and_lists_bad_files_with_reasons(messy):
    records, skipped = scan_dataset(messy, DataOptions(resolution=64))
    by_name = {r.path.name: r for r in records}
    assert sorted(by_name) == ["002-dog running.jpg", "a.png", "latin.png"]
    assert by_name["a.png"].caption == "a red square, plain"
    assert by_name["a.png"].caption_source == "txt"
    assert by_name["002-dog running.jpg"].caption == "dog running"
    assert by_name["002-dog running.jpg"].caption_source == "filename"
    assert by_name["latin.png"].caption == "latin" and by_name["latin.png"].caption_source == "filename"
    reasons = {p.name: r for p, r in skipped}
    assert set(reasons) == {"broken.png", "empty.jpg", "notes.pdf", "latin.txt"}
    assert "empty" in reasons["empty.jpg"]
    assert "not an image" in reasons["notes.pdf"]
    assert "UTF-8" in reasons["latin.txt"] and "file name" in reasons["latin.txt"]
    assert "damaged" in reasons["broken.png"] or "not an image" in reasons["broken.png"]
    assert by_name["002-dog running.jpg"].width == 80 and by_name["002-dog running.jpg"].height == 64


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_dataset(tmp_path / "nope", DataOptions())


# --- prompts ----------------------------------------------------------------------------------


def test_prompt_without_shuffle_or_dropout_keeps_the_caption():
    b = PromptBuilder(["a photo of [name], [filewords]"], "zz", DataOptions(), random.Random(0))
    assert b.build("red, blue ,green") == "a photo of zz, red, blue ,green"


def test_every_template_line_is_used():
    lines = [f"line{i} [name] [filewords]" for i in range(5)]
    b = PromptBuilder(lines, "zz", DataOptions(), random.Random(0))
    seen = Counter(b.build("cap").split()[0] for _ in range(500))
    assert set(seen) == {f"line{i}" for i in range(5)}
    assert min(seen.values()) > 60  # uniform-ish, unlike A1111's one line per image


def test_dropout_keeps_first_tags_and_shuffle_permutes():
    caption = "trigger, cls, t1, t2, t3, t4, t5, t6"
    opts = DataOptions(tag_dropout=1.0, keep_tags=2)
    b = PromptBuilder(["[name]: [filewords]"], "zz", opts, random.Random(0))
    assert b.build(caption) == "zz: trigger, cls"
    opts = DataOptions(shuffle_tags=True, keep_tags=2)
    b = PromptBuilder(["[filewords]"], "zz", opts, random.Random(1))
    outs = [b.build(caption).split(", ") for _ in range(50)]
    for tags in outs:
        assert tags[:2] == ["trigger", "cls"]
        assert sorted(tags[2:]) == ["t1", "t2", "t3", "t4", "t5", "t6"]
    assert len({tuple(t) for t in outs}) > 10
    opts = DataOptions(tag_dropout=0.5)
    b = PromptBuilder(["[filewords]"], "zz", opts, random.Random(2))
    kept = [len(b.build(caption).split(", ")) for _ in range(400)]
    assert 3.4 < sum(kept) / len(kept) < 4.6  # 8 tags, each kept with p=0.5
    # all tags dropped: no dangling separators
    b = PromptBuilder(["a photo of [name], [filewords]"], "zz", DataOptions(tag_dropout=1.0), random.Random(0))
    assert b.build("x, y") == "a photo of zz"


def test_prompts_reproducible_from_rng():
    opts = DataOptions(shuffle_tags=True, tag_dropout=0.3)
    lines = ["a [name] [filewords]", "b [name] [filewords]", "c [name] [filewords]"]
    a = [PromptBuilder(lines, "zz", opts, random.Random(5)).build("p, q, r, s") for _ in range(1)]
    b1 = PromptBuilder(lines, "zz", opts, random.Random(5))
    b2 = PromptBuilder(lines, "zz", opts, random.Random(5))
    assert [b1.build("p, q, r, s") for _ in range(20)] == [b2.build("p, q, r, s") for _ in range(20)]
    assert a[0] == PromptBuilder(lines, "zz", opts, random.Random(5)).build("p, q, r, s")


# --- buckets and pixels -----------------------------------------------------------------------


def test_bucket_params_scale_with_resolution():
    assert bucket_params(DataOptions(resolution=512)) == (64, 256, 1024)
    assert bucket_params(DataOptions(resolution=64)) == (8, 32, 128)
    for res in (64, 512):
        opts = DataOptions(resolution=res, bucketing=True)
        sizes = bucket_sizes(opts)
        step, lo, hi = bucket_params(opts)
        assert (res, res) in sizes
        for w, h in sizes:
            assert w % step == 0 and h % step == 0 and lo <= w <= hi and lo <= h <= hi
            assert w * h <= res * res


@pytest.mark.parametrize("size", [(100, 50), (40, 20), (50, 100), (300, 90), (64, 64), (1000, 700)])
def test_no_upscale_buckets_keep_aspect_and_never_grow(size):
    w, h = size
    opts = DataOptions(resolution=64, bucketing=True, no_upscale=True)
    step, _, hi = bucket_params(opts)
    bw, bh = choose_bucket(w, h, opts)
    assert bw % step == 0 and bh % step == 0
    assert bw <= w and bh <= h  # never upscaled
    assert bw * bh <= 64 * 64 and max(bw, bh) <= hi
    # at least as true to the aspect as flooring both sides to the grid would be
    s = min(1.0, math.sqrt(64 * 64 / (w * h)), hi / max(w, h))
    fw, fh = (w * s) // step * step, (h * s) // step * step
    assert abs(math.log(bw / bh / (w / h))) <= abs(math.log(fw / fh / (w / h))) + 1e-9
    assert bw * bh >= 0.5 * fw * fh


def test_no_upscale_prefers_the_true_aspect_over_flooring():
    opts = DataOptions(resolution=512, bucketing=True, no_upscale=True)
    # flooring 591x443 would give 576x384 (3:2); 512x384 keeps 4:3 exactly
    assert choose_bucket(1024, 768, opts) == (512, 384)
    assert choose_bucket(768, 1024, opts) == (384, 512)
    assert choose_bucket(2000, 2000, opts) == (512, 512)


def test_too_small_for_a_bucket_is_refused():
    with pytest.raises(DataError, match="smaller than one bucket step"):
        choose_bucket(5, 40, DataOptions(resolution=64, bucketing=True))


def test_upscale_buckets_pick_the_closest_aspect():
    opts = DataOptions(resolution=64, bucketing=True, no_upscale=False)
    for w, h in ((20, 10), (300, 100), (10, 30), (50, 50)):
        bw, bh = choose_bucket(w, h, opts)
        err = abs(math.log(bw / bh) - math.log(w / h))
        assert all(err <= abs(math.log(x / y) - math.log(w / h)) + 1e-12 for x, y in bucket_sizes(opts))
    assert choose_bucket(50, 50, opts) == (64, 64)


def _record(path: Path, opts: DataOptions) -> ImageRecord:
    records, skipped = scan_dataset(path.parent, opts)
    assert not skipped, skipped
    return next(r for r in records if r.path == path)


def test_square_mode_crops_instead_of_stretching(tmp_path):
    p = _save(tmp_path / "wide.png", _stripes(96, 32, [(255, 0, 0), (0, 255, 0), (0, 0, 255)]))
    opts = DataOptions(resolution=32)
    rec = _record(p, opts)
    assert rec.bucket == (32, 32)
    pixels, weight = load_pixels(rec, opts)
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.float32 and weight is None
    # the middle (green) third only: a stretch would show red and blue too
    assert torch.allclose(pixels[1], torch.ones(32, 32)) and torch.allclose(pixels[0], -torch.ones(32, 32))


def test_bucketed_pixels_and_flip(tmp_path):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8))
    p = _save(tmp_path / "wide.png", img)
    opts = DataOptions(resolution=64, bucketing=True)
    rec = _record(p, opts)
    assert rec.bucket == (80, 40)  # 3200 px <= 64*64: kept at its own size
    pixels, _ = load_pixels(rec, opts)
    assert pixels.shape == (3, 40, 80)
    assert pixels.min() >= -1 and pixels.max() <= 1
    expected = torch.from_numpy(np.asarray(img, np.float32) / 127.5 - 1).permute(2, 0, 1)
    assert torch.allclose(pixels, expected)  # no resampling at its own size
    flipped, _ = load_pixels(rec, opts, flip=True)
    assert torch.equal(flipped, pixels.flip(-1))
    assert not torch.equal(flipped, pixels)


# --- alpha ------------------------------------------------------------------------------------


def test_alpha_weight_maths():
    ones = alpha_weight(np.full((4, 6), 255, np.uint8))
    assert torch.equal(ones, torch.ones(4, 6))
    assert torch.equal(alpha_weight(np.full((3, 3), 77, np.uint8)), torch.ones(3, 3))
    half = np.zeros((4, 6), np.float32)
    half[:, 3:] = 1.0
    w = alpha_weight(half)
    assert torch.allclose(w.mean(), torch.tensor(1.0))
    assert torch.equal(w[:, :3], torch.zeros(4, 3))
    assert torch.allclose(w[:, 3:], torch.full((4, 3), 2.0))
    ramp = np.linspace(0, 255, 24, dtype=np.float32).reshape(4, 6)
    w = alpha_weight(ramp)
    assert torch.isfinite(w).all() and abs(float(w.mean()) - 1) < 1e-6
    with pytest.raises(DataError, match="fully transparent"):
        alpha_weight(np.zeros((4, 4), np.uint8))


def test_opaque_and_half_transparent_images(tmp_path):
    opts = DataOptions(resolution=32, alpha_weight=True)
    p = _save(tmp_path / "opaque.png", _rgba(32, 32, np.full((32, 32), 255, np.uint8)))
    rec = _record(p, opts)
    assert rec.has_alpha
    _, w = load_pixels(rec, opts)
    assert torch.equal(w, torch.ones(32, 32))
    a = np.zeros((32, 32), np.uint8)
    a[:, 16:] = 255
    p = _save(tmp_path / "half.png", _rgba(32, 32, a, colour=(0, 0, 0)))
    rec = _record(p, opts)
    pixels, w = load_pixels(rec, opts)
    assert w.shape == (32, 32) and torch.isfinite(w).all()
    assert torch.allclose(w.mean(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(w[:, :16], torch.zeros(32, 16))
    assert torch.allclose(w[:, 16:], torch.full((32, 16), 2.0))
    # transparent pixels are composited on white, not the black hiding under them
    assert torch.allclose(pixels[:, :, :16], torch.ones(3, 32, 16))
    assert torch.allclose(pixels[:, :, 16:], -torch.ones(3, 32, 16))
    _, wf = load_pixels(rec, opts, flip=True)
    assert torch.equal(wf, w.flip(-1))
    # without alpha weighting: no weight map
    assert load_pixels(rec, DataOptions(resolution=32))[1] is None


def test_non_square_alpha_keeps_its_orientation(tmp_path):
    a = np.zeros((32, 64), np.uint8)
    a[:16, :32] = 255  # top-left quadrant opaque
    p = _save(tmp_path / "wide.png", _rgba(64, 32, a))
    opts = DataOptions(resolution=64, bucketing=True, alpha_weight=True)
    rec = _record(p, opts)
    assert rec.bucket == (64, 32)
    pixels, w = load_pixels(rec, opts)
    assert pixels.shape == (3, 32, 64) and w.shape == (32, 64)
    assert torch.allclose(w[:16, :32], torch.full((16, 32), 4.0))
    assert float(w[16:, :].abs().sum()) == 0 and float(w[:, 32:].abs().sum()) == 0


def test_exif_rotation_applies_to_pixels_and_alpha(tmp_path):
    stored = np.zeros((64, 32, 4), np.uint8)  # 32 wide, 64 tall as stored
    stored[..., 2] = 255
    stored[..., 3] = 255
    stored[0, :, :3] = (255, 0, 0)  # top row red
    stored[:8, :, 3] = 0  # top 8 rows transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    p = _save(tmp_path / "rot.png", Image.fromarray(stored, "RGBA"), exif=exif)
    opts = DataOptions(resolution=64, bucketing=True, alpha_weight=True)
    rec = _record(p, opts)
    assert (rec.width, rec.height) == (64, 32) and rec.bucket == (64, 32)
    _, w = load_pixels(rec, opts)
    # the stored top rows are now the right-hand columns
    assert float(w[:, 56:].abs().sum()) == 0
    assert bool((w[:, :56] > 0).all())


def test_fully_transparent_image_is_skipped_only_with_alpha_weights(tmp_path):
    p = _save(tmp_path / "ds" / "ghost.png", _rgba(32, 32, np.zeros((32, 32), np.uint8)))
    _save(tmp_path / "ds" / "ok.png", _stripes(32, 32, [(1, 2, 3)]))
    records, skipped = scan_dataset(p.parent, DataOptions(resolution=32, alpha_weight=True))
    assert [r.path.name for r in records] == ["ok.png"]
    assert skipped[0][0] == p and "no opaque pixel" in skipped[0][1]
    records, skipped = scan_dataset(p.parent, DataOptions(resolution=32))
    assert len(records) == 2 and not skipped


# --- the dataset check ------------------------------------------------------------------------


def test_check_dataset_reports_and_accepts(messy, tokenizer):
    rep = check_dataset(messy, DataOptions(resolution=64, bucketing=True), "mycat", tokenizer, n_samples=3)
    assert rep.ok, rep.problems
    assert rep.images == 3 and rep.missing_captions == 2
    assert len(rep.skipped) == 4
    assert rep.sizes == {"64x64": 2, "80x64": 1}
    assert sum(rep.buckets.values()) == 3
    assert len(rep.sample_prompts) == 3 and all("mycat" in p for p in rep.sample_prompts)
    assert "mycat" in rep.summary() and "skipped" in rep.summary()
    assert rep.to_dict()["images"] == 3


def test_check_refuses_when_no_prompt_has_the_name(messy, tokenizer, tmp_path):
    nameless = tmp_path / "nameless.txt"
    nameless.write_text("a photo of [filewords]\n", encoding="utf-8")
    rep = check_dataset(messy, DataOptions(template=str(nameless)), "mycat", tokenizer)
    assert not rep.ok and "no line contains [name]" in rep.problems[0]
    glued = tmp_path / "glued.txt"
    glued.write_text("a photo of [name]s\nmany [name]z\n", encoding="utf-8")
    for tok in (tokenizer, None):
        rep = check_dataset(messy, DataOptions(template=str(glued)), "mycat", tok)
        assert not rep.ok and "as its own token" in rep.problems[0]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a photo of [name]s\na photo of [name]\n", encoding="utf-8")
    rep = check_dataset(messy, DataOptions(template=str(mixed)), "mycat", tokenizer)
    assert rep.ok and any("1 of 2 template line" in w for w in rep.warnings)


def test_check_refuses_an_empty_folder(tmp_path):
    (tmp_path / "only.txt").write_text("x", encoding="utf-8")
    rep = check_dataset(tmp_path, DataOptions(), "mycat")
    assert not rep.ok and "no usable image" in rep.problems[0]
    rep = check_dataset(tmp_path / "missing", DataOptions(), "mycat")
    assert not rep.ok and "does not exist" in rep.problems[0]


# --- the sampler ------------------------------------------------------------------------------


def _fake_records(buckets: list[tuple[int, int]]) -> list[ImageRecord]:
    return [ImageRecord(Path(f"{i}.png"), "", b[0], b[1], False, b, "filename") for i, b in enumerate(buckets)]


def test_sampler_groups_by_bucket_and_is_reproducible():
    recs = _fake_records([(64, 64)] * 7 + [(80, 48)] * 5 + [(48, 80)] * 1)
    s = EpochSampler(recs, batch_size=2, repeats=1, seed=3)
    e0 = s.epoch(0)
    assert e0 == EpochSampler(recs, 2, 1, 3).epoch(0)
    assert e0 != s.epoch(1)
    assert e0 != EpochSampler(recs, 2, 1, 4).epoch(0)
    assert len(e0) == s.batches_per_epoch == 3 + 2 + 0
    assert s.dropped_per_epoch == 1 + 1 + 1
    for batch in e0:
        assert len(batch) == 2 and len({recs[i].bucket for i in batch}) == 1
        assert len(set(batch)) == 2
    # which image is left out changes between epochs
    used = [frozenset(i for b in s.epoch(e) for i in b) for e in range(6)]
    assert len(set(used)) > 1


def test_repeats_multiply_the_epoch():
    recs = _fake_records([(64, 64)] * 6)
    for repeats in (1, 3):
        s = EpochSampler(recs, batch_size=3, repeats=repeats, seed=0)
        batches = s.epoch(0)
        assert len(batches) == 2 * repeats
        counts = Counter(i for b in batches for i in b)
        assert set(counts.values()) == {repeats} and len(counts) == 6


def test_sampler_refuses_a_batch_larger_than_every_bucket():
    with pytest.raises(DataError, match="batch_size 4"):
        EpochSampler(_fake_records([(64, 64)] * 3 + [(80, 48)] * 2), batch_size=4, repeats=1, seed=0)
    assert EpochSampler(_fake_records([(64, 64)] * 3), batch_size=4, repeats=2, seed=0).batches_per_epoch == 1


def test_check_uses_the_user_template_folder_and_a_given_scan(messy, tmp_path):
    user = tmp_path / "templates"
    user.mkdir()
    (user / "mine.txt").write_text("my own [name] with [filewords]\n", encoding="utf-8")
    opts = DataOptions(template="mine", resolution=64)
    assert not check_dataset(messy, opts, "mycat").ok  # not a shipped template
    records, skipped = scan_dataset(messy, opts)
    rep = check_dataset(messy, opts, "mycat", templates_dir=user, scanned=(records[:1], skipped))
    assert rep.ok and rep.images == 1
    assert all(p.startswith("my own mycat with") for p in rep.sample_prompts)
    lines = rep.describe()
    assert lines[0].startswith("ready to train: 1 image(s), 4 skipped")
    assert not check_dataset(messy, opts, "", templates_dir=user).ok
