"""The preprocess job end to end on real files: outputs, captions, policies, bad input, events."""

import os
import re

import pytest
from PIL import Image, ImageChops

from jobs.registry import Job, JobRegistry, JobState, run_job
from preprocessing import PreprocessError, PreprocessOptions, PreprocessResult, preprocess_job, run_preprocess
from preprocessing.captions import list_captions, set_caption
from tests.preprocess_fixtures import (
    GREEN,
    RED,
    noise,
    png_with_declared_size,
    tiny_blip,  # noqa: F401 - fixture
    tiny_blip_dir,  # noqa: F401 - fixture
    tree_hashes,
    truncated_png,
)


def opts(**kw) -> PreprocessOptions:
    return PreprocessOptions(**{"width": 64, "height": 64, **kw})


@pytest.fixture
def src(tmp_path):
    s = tmp_path / "src"
    (s / "sub").mkdir(parents=True)
    noise((96, 80), seed=1).save(s / "a.png")
    noise((200, 64), seed=2).save(s / "sub" / "wide.jpg", quality=95)
    noise((70, 70), seed=3).save(s / "café 猫.png")
    (s / "a.txt").write_text("a red thing\n", encoding="utf-8")
    return s


def files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_outputs_sizes_names_flips_and_source_untouched(src, tmp_path):
    before = tree_hashes(src)
    dst = tmp_path / "out"
    r = run_preprocess(src, dst, opts(split=True, flip=True, existing_caption="keep"))
    assert tree_hashes(src) == before
    # wide.jpg: 200x64 -> ratio 0.32 -> split: long 200*64//64 = 200, count ceil((200-12.8)/51.2) = 4
    assert files(dst) == sorted([
        "a.png", "a-flip.png", "a.txt", "a-flip.txt",
        "café 猫.png", "café 猫-flip.png",
        *[f"sub-wide-p{i}{f}.png" for i in range(1, 5) for f in ("", "-flip")],
    ])
    assert all(Image.open(dst / n).size == (64, 64) for n in files(dst) if n.endswith(".png"))
    assert sorted(r.outputs) == sorted(str(dst / n) for n in files(dst) if n.endswith(".png"))
    assert (dst / "a.txt").read_text(encoding="utf-8") == "a red thing\n"
    assert (dst / "a-flip.txt").read_text(encoding="utf-8") == "a red thing\n"
    a, af = Image.open(dst / "a.png"), Image.open(dst / "a-flip.png")
    assert ImageChops.difference(a.transpose(Image.Transpose.FLIP_LEFT_RIGHT), af).getbbox() is None
    assert r.skipped == [] and r.small == [] and r.captions_written == 2


def test_bad_input_corpus_is_reported_and_the_rest_goes_on(src, tmp_path):
    bad = {
        "empty.png": "empty file (0 bytes)",
        "text.png": "not an image",
        "truncated.png": "damaged or truncated",
        "bomb.png": "decompression bomb",
        "huge.png": "over the pixel limit",
        "thin.png": "aspect ratio",
        "broken.png": "broken link",
        "notes.json": "not an image file type (.json)",
    }
    (src / "empty.png").write_bytes(b"")
    (src / "text.png").write_text("hello")
    truncated_png(src / "truncated.png")
    png_with_declared_size(src / "bomb.png", 40000, 40000)
    noise((150, 150)).save(src / "huge.png")
    noise((300, 20)).save(src / "thin.png")
    (src / "broken.png").symlink_to(src / "nowhere.png")
    (src / "notes.json").write_text("{}")
    (src / ".ipynb_checkpoints").mkdir()
    noise((64, 64)).save(src / ".ipynb_checkpoints" / "hidden.png")
    before = tree_hashes(src)
    r = run_preprocess(src, tmp_path / "out", opts(max_pixels=20_000))
    assert tree_hashes(src) == before
    reasons = {os.path.basename(p): reason for p, reason in r.skipped}
    assert set(reasons) == set(bad)
    for name, words in bad.items():
        assert words in reasons[name], (name, reasons[name])
    assert sorted(os.path.basename(p) for p in r.outputs) == ["a.png", "café 猫.png", "sub-wide.png"]


def test_job_events_progress_warnings_and_result(src, tmp_path):
    (src / "zero.png").write_bytes(b"")
    (src / "x.doc").write_text("x")
    reg = JobRegistry()
    try:
        job = reg.submit("preprocess", "prep", preprocess_job(src, tmp_path / "out", opts()))
        assert job.wait(timeout=60) == JobState.FINISHED
    finally:
        reg.shutdown()
    progress = job.events("progress")
    assert len(progress) == 5  # a.png, sub/wide.jpg, café 猫.png, zero.png, x.doc
    assert [e.data["done"] for e in progress] == [1, 2, 3, 4, 5] and {e.data["total"] for e in progress} == {5}
    assert {e.data["file"] for e in progress} == {"a.png", "sub/wide.jpg", "café 猫.png", "zero.png", "x.doc"}
    warnings = [e.data["text"] for e in job.events("warning")]
    assert len(warnings) == 2 and any("zero.png" in w and "empty" in w for w in warnings)
    result = PreprocessResult.from_dict(job.last("result").data["value"])
    assert len(result.outputs) == 3 and len(result.skipped) == 2


def test_stop_request_returns_what_was_done(src, tmp_path, tiny_blip):  # noqa: F811
    job = Job(id="p", kind="preprocess", title="t")

    class StopAfterFirstBatch:
        name = "stopper"

        def caption(self, images):
            job.request_stop()
            return tiny_blip.caption(images)

        def close(self):
            pass

    job.fn = preprocess_job(src, tmp_path / "out", opts(captioner="blip", caption_batch_size=1),
                            captioner=StopAfterFirstBatch())
    run_job(job)
    assert job.state == JobState.INTERRUPTED
    result = job.result
    assert result["interrupted"] and len(result["outputs"]) == 1 and result["captions_written"] == 1


def test_rerun_policies_skip_overwrite_new_folder(src, tmp_path):
    dst = tmp_path / "out"
    first = run_preprocess(src, dst, opts())
    assert len(first.outputs) == 3
    stamp = {p: os.stat(p).st_mtime_ns for p in first.outputs}
    again = run_preprocess(src, dst, opts(on_existing="skip"))
    assert again.outputs == [] and len(again.already_done) == 3
    assert {p: os.stat(p).st_mtime_ns for p in first.outputs} == stamp
    noise((64, 64), seed=9).save(src / "new.png")
    more = run_preprocess(src, dst, opts(on_existing="skip"))
    assert [os.path.basename(p) for p in more.outputs] == ["new.png"]
    over = run_preprocess(src, dst, opts(on_existing="overwrite"))
    assert len(over.outputs) == 4
    fresh = run_preprocess(src, dst, opts(on_existing="new_folder"))
    assert fresh.dst == str(tmp_path / "out-2") and len(os.listdir(tmp_path / "out-2")) == 4
    assert not [n for n in os.listdir(dst) if n.endswith(".tmp")]


def test_destination_rules(src, tmp_path):
    with pytest.raises(PreprocessError, match="inside the source folder"):
        run_preprocess(src, src / "out", opts())
    with pytest.raises(PreprocessError, match="is the source folder"):
        run_preprocess(src, src, opts())
    with pytest.raises(PreprocessError, match="does not exist"):
        run_preprocess(tmp_path / "nope", tmp_path / "out", opts())
    assert not (src / "out").exists()


def test_small_images_kept_at_native_size_and_reported(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    noise((40, 30)).save(s / "tiny.png")
    noise((100, 100)).save(s / "ok.png")
    r = run_preprocess(s, tmp_path / "o", opts())
    assert [os.path.basename(p) for p in r.small] == ["tiny.png"]
    assert Image.open(tmp_path / "o" / "tiny.png").size == (24, 24)  # 30x30 square of the target aspect, trimmed to 8
    up = run_preprocess(s, tmp_path / "o2", opts(upscale=True))
    assert up.small == [] and Image.open(tmp_path / "o2" / "tiny.png").size == (64, 64)


def test_alpha_kept_or_composited_in_outputs(tmp_path):
    s = tmp_path / "s"
    s.mkdir()
    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (32, 64), (*GREEN, 255)), (32, 0))
    img.save(s / "cut.png")
    r = run_preprocess(s, tmp_path / "keep", opts(keep_alpha=True, output_format="jpg"))
    assert [os.path.basename(p) for p in r.outputs] == ["cut.png"]  # alpha forces PNG
    kept = Image.open(r.outputs[0])
    assert kept.mode == "RGBA" and kept.getpixel((2, 2))[3] == 0 and kept.getpixel((60, 2))[3] == 255
    r = run_preprocess(s, tmp_path / "flat", opts(background="#ff0000", output_format="jpg"))
    flat = Image.open(r.outputs[0])
    assert r.outputs[0].endswith("cut.jpg") and flat.mode == "RGB"
    assert all(abs(a - b) < 10 for a, b in zip(flat.getpixel((2, 2)), RED, strict=True))


@pytest.mark.parametrize("policy", ["ignore", "keep", "prepend", "append"])
def test_existing_caption_policies_with_blip(src, tmp_path, tiny_blip, policy):  # noqa: F811
    dst = tmp_path / "out"
    run_preprocess(src, dst, opts(captioner="blip", existing_caption=policy, caption_batch_size=1),
                   captioner=tiny_blip)
    blip_a = tiny_blip.caption([Image.open(dst / "a.png")])[0]
    blip_c = tiny_blip.caption([Image.open(dst / "café 猫.png")])[0]
    assert blip_a and re.fullmatch(r"[a-z ]+", blip_a)
    expected_a = {"ignore": blip_a, "keep": "a red thing", "prepend": f"a red thing, {blip_a}",
                  "append": f"{blip_a}, a red thing"}[policy]
    assert (dst / "a.txt").read_text(encoding="utf-8") == expected_a + "\n"
    assert (dst / "café 猫.txt").read_text(encoding="utf-8") == blip_c + "\n"  # no existing caption: generated


def test_prefix_suffix_and_captions_only_from_existing(src, tmp_path):
    dst = tmp_path / "out"
    r = run_preprocess(src, dst, opts(existing_caption="keep", prefix="sks", suffix="best quality"))
    assert (dst / "a.txt").read_text(encoding="utf-8") == "sks, a red thing, best quality\n"
    assert (dst / "café 猫.txt").read_text(encoding="utf-8") == "sks, best quality\n"
    assert r.captions_written == 3


def test_filename_caption_mode(src, tmp_path, tiny_blip):  # noqa: F811
    dst = tmp_path / "out"
    (src / "café 猫.txt").write_text('odd: "name"/with?chars', encoding="utf-8")
    r = run_preprocess(src, dst, opts(captioner="blip", caption_to="filename", existing_caption="keep",
                                      flip=True), captioner=tiny_blip)
    names = files(dst)
    assert not [n for n in names if n.endswith(".txt")]
    # sorted sources: a.png (0), café 猫.png (1), sub/wide.jpg (2); flips take the next sub-index
    assert "00000-0-a red thing.png" in names and "00000-1-a red thing.png" in names
    assert "00001-0-odd name with chars.png" in names
    wide = [n for n in names if n.startswith("00002-0-")]
    blip = tiny_blip.caption([Image.open(dst / wide[0])])[0]
    assert wide == [f"00002-0-{blip}.png"]
    assert len(r.outputs) == 6 and r.captions_written == 0


def test_caption_only_mode_writes_only_txt(src, tmp_path, tiny_blip):  # noqa: F811
    images_before = {k: v for k, v in tree_hashes(src).items() if not k.endswith(".txt")}
    r = run_preprocess(src, None, opts(caption_only=True, captioner="blip", existing_caption="keep", prefix="sks"),
                       captioner=tiny_blip)
    after = tree_hashes(src)
    assert {k: v for k, v in after.items() if not k.endswith(".txt")} == images_before
    assert sorted(k for k in after if k.endswith(".txt")) == ["a.txt", "café 猫.txt", "sub/wide.txt"]
    assert (src / "a.txt").read_text(encoding="utf-8") == "sks, a red thing\n"
    blip = tiny_blip.caption([Image.open(src / "sub" / "wide.jpg").convert("RGB")])[0]
    assert (src / "sub" / "wide.txt").read_text(encoding="utf-8") == f"sks, {blip}\n"
    assert r.captions_written == 3
    # running again does not stack the trigger word
    run_preprocess(src, None, opts(caption_only=True, captioner="blip", existing_caption="keep", prefix="sks"),
                   captioner=tiny_blip)
    assert (src / "a.txt").read_text(encoding="utf-8") == "sks, a red thing\n"


def test_caption_only_without_captioner_must_not_wipe_captions():
    with pytest.raises(ValueError, match="would replace every caption"):
        PreprocessOptions(caption_only=True).validate()


def test_options_round_trip_and_reject_unknown_keys():
    o = opts(crop="focal", flip=True, prefix="sks")
    assert PreprocessOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ValueError, match="unknown preprocessing option.*colour"):
        PreprocessOptions.from_dict({"colour": "red"})
    with pytest.raises(ValueError, match="crop must be one of"):
        PreprocessOptions(crop="zoom").validate()
    with pytest.raises(ValueError, match="split_overlap"):
        PreprocessOptions(split_overlap=0.95).validate()


def test_caption_editor_lists_and_saves(tmp_path):
    for n in ("b.png", "a.jpg"):
        noise((8, 8)).save(tmp_path / n)
    (tmp_path / "a.txt").write_text("\ufeffold  caption\n", encoding="utf-8")
    (tmp_path / "readme.md").write_text("x")
    items = list_captions(tmp_path)
    assert [(i.path.name, i.caption, i.has_caption) for i in items] == [("a.jpg", "old caption", True),
                                                                        ("b.png", "", False)]
    item = set_caption(tmp_path / "b.png", "  a new\ncaption ")
    assert item.caption == "a new caption" and (tmp_path / "b.txt").read_text(encoding="utf-8") == "a new caption\n"
    assert [i.caption for i in list_captions(tmp_path)] == ["old caption", "a new caption"]
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        set_caption(tmp_path / "missing.png", "x")
    with pytest.raises(ValueError, match="readme.md is not an image"):
        set_caption(tmp_path / "readme.md", "x")


def test_focal_and_fit_modes_in_the_job(tmp_path):
    import numpy as np

    s = tmp_path / "s"
    s.mkdir()
    g = np.full((64, 192), 120, dtype=np.uint8)
    g[:, 140:180] = np.random.default_rng(5).integers(0, 256, (64, 40), dtype=np.uint8)
    Image.fromarray(g).convert("RGB").save(s / "detail-right.png")
    focal = run_preprocess(s, tmp_path / "focal", opts(crop="focal"))
    centre = run_preprocess(s, tmp_path / "centre", opts(crop="center"))
    spread = [np.asarray(Image.open(r.outputs[0]).convert("L")).std() for r in (focal, centre)]
    assert spread[0] > 40 and spread[1] < 1  # focal found the detail; the centre of this image is flat
    fit = run_preprocess(s, tmp_path / "fit", opts(crop="fit"))
    # the target's area: sqrt(64*64 / (192*64)) = 0.577 -> 111x37 -> trimmed to multiples of 8
    assert Image.open(fit.outputs[0]).size == (104, 32)


@pytest.mark.parametrize("caption_to", ["sidecar", "filename"])
def test_split_source_is_done_only_when_every_part_exists(src, tmp_path, caption_to):
    """A kill between the parts of a split leaves the first parts; the rerun (skip) writes the rest
    instead of counting the source as done, and a whole source is still skipped."""
    dst = tmp_path / "out"
    o = opts(split=True, flip=True, prefix="sks", caption_to=caption_to)
    first = run_preprocess(src, dst, o)
    complete = files(dst)
    wide = sorted(n for n in complete if "wide" in n or n.startswith("00002-"))
    assert len([n for n in wide if n.endswith(".png")]) == 8  # 4 parts, each flipped
    later = [n for n in wide if re.search(r"(-p[34](-flip)?\.)|(^0000[12]-[2367]-)", n)]
    assert later and len(later) < len(wide)
    for name in later:  # as a kill after the second part leaves it
        (dst / name).unlink()
    again = run_preprocess(src, dst, o)
    assert files(dst) == complete
    wide_src = str(src / "sub" / "wide.jpg")
    assert wide_src not in again.already_done and len(again.already_done) == 2
    assert sorted(again.outputs) == sorted(str(dst / n) for n in wide if n.endswith(".png"))
    assert len(first.outputs) == len([n for n in complete if n.endswith(".png")])
    if caption_to == "sidecar":  # a missing caption also makes the source unfinished
        (dst / "sub-wide-p2.txt").unlink()
        third = run_preprocess(src, dst, o)
        assert wide_src not in third.already_done and files(dst) == complete
    fourth = run_preprocess(src, dst, o)
    assert fourth.outputs == [] and len(fourth.already_done) == 3
