"""The preprocess job: a source folder in, a clean captioned dataset folder out.

Rules it keeps:
- The source is only read. Outputs go to the destination, which may not be the source or lie
  inside it (the next run would read its own outputs back as inputs).
- One bad file is one line in `skipped` (path, reason) and a warning event; the rest goes on.
- Captions are generated after cropping, from the crop that is saved; flipped copies get the
  caption of the crop they mirror.
- Re-running into the same destination is safe: `skip` leaves sources whose outputs exist,
  `overwrite` replaces them (atomically), `new_folder` writes to `<dst>-2`, `<dst>-3`, ...
- A stop request finishes the batch in hand, then returns what was done (state: interrupted).
- A full disk stops the job at the first output that cannot be written (no point going on): the
  job fails with one message naming that file, and its result lists what was written before.
- Every output is whole: images and captions are written atomically, the caption before its
  image and a flipped copy before the crop it mirrors, and a source whose outputs could not all
  be written has the ones just written removed. So an image present means its outputs are
  complete, which is what `skip` checks after a kill or a full disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from preprocessing.captioners import Captioner, NullCaptioner, load_blip
from preprocessing.captions import (
    caption_path,
    caption_to_filename,
    compose_caption,
    read_caption,
    write_caption,
)
from preprocessing.geometry import apply_plan, focal_box, mirror, plan_crops
from preprocessing.images import ImageReadError, is_image_name, open_image
from preprocessing.options import PreprocessOptions
from workspace.atomic import atomic_write_with, is_disk_full, remove_stale_temps

if TYPE_CHECKING:
    from jobs.registry import Job

log = logging.getLogger(__name__)

_SAVE_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


class PreprocessError(ValueError):
    """The job as a whole cannot start (bad folders or options). One line, says what to do."""


class PreprocessStopped(RuntimeError):
    """The job stopped part way (a full disk). The message names the file; the job's result
    (set before this is raised) lists what was written."""


@dataclass
class PreprocessResult:
    """What a run did. JSON-able through `to_dict` (the job's result event)."""

    src: str
    dst: str
    outputs: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source path, reason)
    small: list[str] = field(default_factory=list)  # smaller than the target, not upscaled
    already_done: list[str] = field(default_factory=list)  # sources left alone (on_existing=skip)
    captions_written: int = 0
    interrupted: bool = False
    error: str = ""  # why the job stopped before the end (a full disk); "" when it did not


    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["skipped"] = [[p, r] for p, r in self.skipped]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessResult:
        d = dict(d)
        d["skipped"] = [tuple(x) for x in d.get("skipped", [])]
        return cls(**d)


@dataclass
class _Source:
    path: Path
    rel: str
    index: int
    key: str  # output stem (sidecar mode)


@dataclass
class _Pending:
    """A crop waiting for its caption (captions run in batches)."""

    source: _Source
    part: int
    nparts: int
    image: Image.Image
    existing: str | None
    generated: str = ""


def preprocess_job(src: str | Path, dst: str | Path | None, options: PreprocessOptions, *,
                   captioner: Captioner | None = None) -> Callable[[Job], dict]:
    """A job function for `JobRegistry.submit("preprocess", title, fn)`; its result is
    `PreprocessResult.to_dict()`. Options and folders are checked now, so a mistake is an
    error at submit time rather than a failed job."""
    options.validate()
    check_folders(src, dst, options)

    def fn(job: Job) -> dict:
        result = run_preprocess(src, dst, options, job=job, captioner=captioner)
        if result.error:
            job.result = result.to_dict()  # the job fails, and still says what was written
            raise PreprocessStopped(result.error)
        return result.to_dict()

    return fn


def run_preprocess(src: str | Path, dst: str | Path | None, options: PreprocessOptions | None = None,
                   job: Job | None = None, *, captioner: Captioner | None = None) -> PreprocessResult:
    """Preprocess every image under `src` into `dst` (or caption `src` in place when
    `options.caption_only`). `captioner` overrides the one the options would load (the UI may
    keep one loaded; tests inject one); an injected captioner is not closed here."""
    options = (options or PreprocessOptions()).validate()
    check_folders(src, dst, options)
    src_path = Path(src).expanduser()
    dst_path = src_path if options.caption_only else _prepare_destination(Path(dst).expanduser(), options.on_existing)
    remove_stale_temps(dst_path)  # what a killed earlier run left half-written

    result = PreprocessResult(src=str(src_path), dst=str(dst_path))
    entries, skipped_now = _scan(src_path, options.recursive)
    total = len(entries) + len(skipped_now)
    done = 0
    for path, reason in skipped_now:
        result.skipped.append((str(path), reason))
        done += 1
        _progress(job, done, total, path, src_path)
        _warn(job, f"skipped {path}: {reason}")

    sources = _name_sources(entries, src_path)
    own_captioner = captioner is None
    if captioner is None:
        captioner = load_captioner(options) if options.wants_captions and sources else NullCaptioner()
    if job is not None:
        job.message(f"{len(sources)} images in {src_path}" + ("" if options.caption_only else f" -> {dst_path}"))

    pending: list[_Pending] = []
    try:
        for source in sources:
            if job is not None and job.stop_requested:
                result.interrupted = True
                break
            try:
                if options.caption_only:
                    pending.extend(_caption_only_item(source, options))
                elif _already_done(source, dst_path, options):
                    result.already_done.append(str(source.path))
                else:
                    items, small = _crop_source(source, options)
                    if small:
                        result.small.append(str(source.path))
                    pending.extend(items)
            except ImageReadError as e:
                result.skipped.append((str(source.path), str(e)))
                _warn(job, f"skipped {source.path}: {e}")
            except Exception as e:  # noqa: BLE001 - one odd file must not end the job
                log.debug("preprocess %s failed", source.path, exc_info=True)
                reason = f"{e.__class__.__name__}: {e}"
                result.skipped.append((str(source.path), reason))
                _warn(job, f"skipped {source.path}: {reason}")
            if len(pending) >= (options.caption_batch_size if options.wants_captions else 1):
                _flush(pending, captioner, dst_path, options, result, job)
                pending = []
                if result.error:
                    break
            done += 1
            _progress(job, done, total, source.path, src_path)
        if not result.error:
            _flush(pending, captioner, dst_path, options, result, job)
    finally:
        if own_captioner:
            captioner.close()

    if job is not None:
        if result.small:
            job.message(f"{len(result.small)} image(s) smaller than {options.width}x{options.height} were kept at "
                        f"their size (not upscaled)")
        job.message(f"wrote {len(result.outputs)} image(s) and {result.captions_written} caption(s); "
                    f"skipped {len(result.skipped)} file(s)"
                    + (f"; {len(result.already_done)} source(s) already done in {dst_path.name} were left as they "
                       "are (choose 'overwrite' to redo them)" if result.already_done else ""))
    elif result.error:
        log.warning("%s", result.error)
    return result


# --- folders -----------------------------------------------------------------------------------


def check_folders(src: str | Path, dst: str | Path | None, options: PreprocessOptions) -> None:
    """Raise `PreprocessError` if the folders cannot work; changes nothing on disk.

    The destination may not be the source or lie inside it: outputs there would be read back
    as inputs on the next run (refusing is clearer than silently excluding them).
    """
    src_path = Path(src).expanduser()
    if not src_path.is_dir():
        raise PreprocessError(f"source folder {src_path} does not exist or is not a folder")
    if options.caption_only:
        return
    if dst is None or str(dst).strip() == "":
        raise PreprocessError("no destination folder given (or choose caption-only to caption in place)")
    dst_path = Path(dst).expanduser()
    s, d = src_path.resolve(), dst_path.resolve()
    if d == s:
        raise PreprocessError(f"destination {dst_path} is the source folder: choose another folder "
                              f"(or caption-only mode to write captions in place)")
    if s in d.parents:
        raise PreprocessError(f"destination {dst_path} is inside the source folder {src_path}: choose a folder "
                              f"outside it (outputs would be read back as inputs next time)")
    if d.exists() and not d.is_dir():
        raise PreprocessError(f"destination {dst_path} exists and is not a folder")


def _prepare_destination(dst: Path, on_existing: str) -> Path:
    if on_existing == "new_folder" and dst.is_dir() and any(dst.iterdir()):
        n = 2
        while True:
            candidate = dst.with_name(f"{dst.name}-{n}")
            if not candidate.exists() or (candidate.is_dir() and not any(candidate.iterdir())):
                dst = candidate
                break
            n += 1
    dst.mkdir(parents=True, exist_ok=True)
    return dst


def _scan(src: Path, recursive: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image candidates (sorted, stable) and files to report right away.

    Hidden files and folders are ignored silently (`.ipynb_checkpoints`, `.DS_Store`, our own
    temp files), as are `.txt` files (captions). Linked folders are not followed (loops).
    """
    images: list[Path] = []
    report: list[tuple[Path, str]] = []
    for root, dirs, files in os.walk(src, followlinks=False):
        rootp = Path(root)
        keep = []
        for d in sorted(dirs):
            if d.startswith("."):
                continue
            if (rootp / d).is_symlink():
                report.append((rootp / d, "linked folder, not followed"))
                continue
            keep.append(d)
        dirs[:] = keep if recursive else []
        for name in sorted(files):
            p = rootp / name
            if name.startswith(".") or p.suffix.lower() == ".txt":
                continue
            if is_image_name(p):
                images.append(p)
            else:
                report.append((p, f"not an image file type ({p.suffix or 'no suffix'}); images are "
                                  f"png, jpg, jpeg, webp, bmp, tif, tiff, gif"))
    return images, report


def _name_sources(paths: list[Path], src: Path) -> list[_Source]:
    """Stable output stems: the path below the source joined with '-' (flat output folder).
    Two sources with the same stem (cat.jpg, cat.png) keep their suffix to stay apart."""
    stems = [_fit_stem("-".join(p.relative_to(src).with_suffix("").parts)) for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.lower()] = counts.get(s.lower(), 0) + 1
    out, used = [], set()
    for i, (p, stem) in enumerate(zip(paths, stems, strict=True)):
        key = stem if counts[stem.lower()] == 1 else f"{stem}_{p.suffix.lstrip('.').lower()}"
        base, n = key, 2
        while key.lower() in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key.lower())
        out.append(_Source(path=p, rel=str(p.relative_to(src)), index=i, key=key))
    return out


# Output names add up to ~20 bytes to the stem ("_png_2", "-p12", "-flip", ".webp"); file systems
# allow 255 bytes per name, so a stem is cut to this many bytes (on a character boundary).
MAX_STEM_BYTES = 200


def _fit_stem(stem: str) -> str:
    data = stem.encode("utf-8")
    return stem if len(data) <= MAX_STEM_BYTES else data[:MAX_STEM_BYTES].decode("utf-8", errors="ignore")


def _ext(options: PreprocessOptions, image: Image.Image) -> str:
    return "png" if image.mode == "RGBA" else options.output_format


_OUTPUT_EXTS = ("png", "jpg", "webp")


def _already_done(source: _Source, dst: Path, options: PreprocessOptions) -> bool:
    """Every output of `source` is there: each part of a split (a kill between parts leaves the
    later ones to the rerun), each with its caption file when the first part has one.

    Within a part the caption and the flipped copy are written before the crop itself, so the
    crop's image standing means its part is whole. Nothing is decoded unless the first part
    exists; then only the header is read, for the number of parts."""
    if options.on_existing != "skip":
        return False

    def output(i: int, n: int) -> Path | None:
        """The image written for part `i` of `n`, if there is one."""
        if options.caption_to == "filename":
            return next((p for p in sorted(dst.glob(f"{source.index:05}-{i}-*"))
                         if p.suffix.lstrip(".") in _OUTPUT_EXTS), None)
        stem = source.key if n == 1 else f"{source.key}-p{i + 1}"
        return next((dst / f"{stem}.{e}" for e in _OUTPUT_EXTS if (dst / f"{stem}.{e}").exists()), None)

    if output(0, 1) is None and output(0, 2) is None:
        return False
    nparts = _planned_parts(source, options) if options.split else 1
    if nparts is None:
        return False  # unreadable now: the normal path reports why
    outputs = [output(i, nparts) for i in range(nparts)]
    if any(o is None for o in outputs):
        return False
    if options.caption_to == "sidecar" and caption_path(outputs[0]).exists():
        return all(caption_path(o).exists() for o in outputs)
    return True


def _planned_parts(source: _Source, options: PreprocessOptions) -> int | None:
    """How many crops the split makes of `source`, from its header (size and EXIF orientation)."""
    try:
        with Image.open(source.path) as img:
            w, h = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn when opened
                w, h = h, w
    except Exception:  # noqa: BLE001 - any unreadable file is simply "not done"
        return None
    if w <= 0 or h <= 0 or (options.max_pixels and w * h > options.max_pixels):
        return None
    try:
        plan = plan_crops(w, h, options.width, options.height, mode=options.crop, upscale=options.upscale,
                          split=options.split, split_threshold=options.split_threshold,
                          split_overlap=options.split_overlap, multiple_of=options.multiple_of)
    except ValueError:
        return None
    return len(plan.boxes) if plan.kind != "focal" else 1


# --- per image ----------------------------------------------------------------------------------


def _open(source: _Source, options: PreprocessOptions, keep_alpha: bool):
    return open_image(source.path, keep_alpha=keep_alpha, background=options.background_rgb,
                      max_pixels=options.max_pixels, max_aspect=options.max_aspect)


def _crop_source(source: _Source, options: PreprocessOptions) -> tuple[list[_Pending], bool]:
    loaded = _open(source, options, options.keep_alpha)
    img = loaded.image
    w, h = img.size
    plan = plan_crops(w, h, options.width, options.height, mode=options.crop, upscale=options.upscale,
                      split=options.split, split_threshold=options.split_threshold,
                      split_overlap=options.split_overlap, multiple_of=options.multiple_of)
    if plan.kind == "focal":
        resized = img.resize(plan.resize_to, Image.Resampling.LANCZOS) if img.size != plan.resize_to else img
        left, top, right, bottom = plan.boxes[0]
        box = focal_box(resized, right - left, bottom - top, edges_weight=options.focal_edges_weight,
                        entropy_weight=options.focal_entropy_weight)
        crops = [resized.crop(box)]
    else:
        crops = apply_plan(img, plan)
    existing = read_caption(source.path)
    items = [_Pending(source, i, len(crops), c, existing) for i, c in enumerate(crops)]
    return items, plan.small


def _caption_only_item(source: _Source, options: PreprocessOptions) -> list[_Pending]:
    existing = read_caption(source.path)
    if options.existing_caption == "keep" and existing:
        image = Image.new("RGB", (1, 1))  # nothing to generate; no need to decode the image
    else:
        image = _open(source, options, keep_alpha=False).image
    return [_Pending(source, 0, 1, image, existing)]


def _flush(pending: list[_Pending], captioner: Captioner, dst: Path, options: PreprocessOptions,
           result: PreprocessResult, job: Job | None) -> None:
    """Caption the batch (only crops that need it), then save images and caption files."""
    if not pending:
        return
    need = [p for p in pending if not (options.existing_caption == "keep" and p.existing)]
    if options.wants_captions and need:
        try:
            texts = captioner.caption([p.image for p in need])
            for p, t in zip(need, texts, strict=True):
                p.generated = t
        except Exception as e:  # noqa: BLE001 - images still get saved, with what captions we have
            log.debug("captioning failed", exc_info=True)
            names = ", ".join(sorted({p.source.rel for p in need}))
            _warn(job, f"captioning failed for {names}: {e.__class__.__name__}: {e}")
    for p in pending:
        caption = compose_caption(p.generated, p.existing, options.existing_caption, options.prefix, options.suffix)
        try:
            if options.caption_only:
                if options.wants_captions and p in need and not p.generated and p.existing:
                    _warn(job, f"no caption generated for {p.source.path}; its caption file is left as it was")
                    continue
                if caption and caption != (p.existing or ""):
                    write_caption(p.source.path, caption)
                    result.captions_written += 1
                    result.outputs.append(str(p.source.path.with_suffix(".txt")))
                continue
            _save_item(p, caption, dst, options, result)
        except OSError as e:
            if is_disk_full(e):  # every later output would fail too: stop with one clear message
                result.error = (f"stopped: {e}; wrote {len(result.outputs)} image(s) and "
                                f"{result.captions_written} caption(s) before it. Free some space and run "
                                f"again: outputs already written are skipped")
                return
            result.skipped.append((str(p.source.path), f"could not write output: {e}"))
            _warn(job, f"could not write output for {p.source.path}: {e}")


def _save_item(p: _Pending, caption: str, dst: Path, options: PreprocessOptions, result: PreprocessResult) -> None:
    """Write one crop (and its flipped copy) with captions, all or nothing.

    Order matters for `skip` after a kill: each caption goes before its image, and the flipped
    copy before the crop itself, so the crop's image (what `_already_done` looks for) is the
    last file written. If a write fails, the files this call created are removed again."""
    ext = _ext(options, p.image)
    variants = [(p.part, p.image)]
    if options.flip:
        variants.append((p.nparts + p.part, mirror(p.image)))
    planned = []
    for n, (sub, image) in enumerate(variants):
        if options.caption_to == "filename":
            words = caption_to_filename(caption) or caption_to_filename(p.source.path.stem) or "image"
            name = f"{p.source.index:05}-{sub}-{words}.{ext}"
        else:
            stem = p.source.key if p.nparts == 1 else f"{p.source.key}-p{p.part + 1}"
            name = f"{stem}{'-flip' if n else ''}.{ext}"
        planned.append((dst / name, image))
    created: list[Path] = []
    outputs, captions = [], 0
    try:
        for target, image in reversed(planned):  # the flipped copy first, the crop itself last
            if options.caption_to == "sidecar" and caption:
                _write_new(created, caption_path(target), lambda t=target: write_caption(t, caption))
                captions += 1
            _write_new(created, target, lambda t=target, im=image: _save_image(im, t, ext))
            outputs.append(str(target))
    except OSError:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    result.outputs.extend(reversed(outputs))
    result.captions_written += captions


def _write_new(created: list[Path], target: Path, write: Callable[[], object]) -> None:
    """Run `write`; remember `target` when it did not exist before (so a failure can undo it)."""
    existed = target.exists()
    write()
    if not existed:
        created.append(target)


def _save_image(image: Image.Image, target: Path, ext: str) -> None:
    fmt, params = _SAVE_FORMATS[ext]
    atomic_write_with(target, lambda tmp: image.save(tmp, format=fmt, **params))


# --- events -------------------------------------------------------------------------------------


def _progress(job: Job | None, done: int, total: int, path: Path, src: Path) -> None:
    if job is not None:
        try:
            rel = str(path.relative_to(src))
        except ValueError:
            rel = str(path)
        job.progress(done, total, file=rel)


def _warn(job: Job | None, text: str) -> None:
    if job is not None:
        job.warning(text)
    else:
        log.warning("%s", text)


def load_captioner(options: PreprocessOptions) -> Captioner:
    """The captioner the options ask for (CaptionerError with a one-line reason if missing)."""
    if not options.wants_captions:
        return NullCaptioner()
    return load_blip(options.blip_model, options.device, allow_download=options.allow_download,
                     cache_dir=options.cache_dir, max_new_tokens=options.caption_max_tokens,
                     num_beams=options.caption_beams)
