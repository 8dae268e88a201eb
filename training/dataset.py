"""The training dataset: scan a folder, read captions, build prompts, load pixels, batch by bucket.

What we fix compared with A1111's dataset:

* the scan is recursive and never crashes: unreadable files are listed with a reason;
* captions come from ``<stem>.txt`` (UTF-8, stripped) or the file name (A1111's rule); a word
  regex with capture groups works instead of crashing;
* a template line is drawn for every fetch (A1111 tied each image to one line when tag
  shuffle and dropout were off); tag dropout can keep the first K tags;
* non-square images are center-cropped (square mode) or put in aspect-ratio buckets instead
  of being stretched; buckets can refuse to upscale;
* alpha becomes a loss weight with sane maths: mean 1 over the image, fully opaque -> exactly
  ones, never NaN, correct orientation for non-square images; transparent pixels are
  composited on white instead of training on whatever colour hides under them;
* image repeats per epoch really repeat images;
* a dataset check shows the exact prompts and refuses a run in which no prompt holds the name.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from embeddings.names import NameMatcher, tokenize_plain
from preprocessing.geometry import apply_plan, plan_cover
from preprocessing.images import IMAGE_SUFFIXES, ImageReadError, LoadedImage, open_image
from training.config import ConfigError, TrainConfig
from training.templates import TemplateError, load_template, render
from workspace.atomic import remove_stale_temps

CAPTION_SUFFIX = ".txt"
WHITE = (255, 255, 255)
# Files that live beside images and are not images: not worth listing as skipped.
_SIDECAR_SUFFIXES = (CAPTION_SUFFIX, ".json", ".toml", ".npz", ".npy", ".csv", ".md", ".caption")
_LEADING_NUMBERS = re.compile(r"^[-\d]+\s*")
MAX_PROMPT_TOKENS = 75  # one CLIP chunk without BOS/EOS; the rest of a prompt is cut off


class DataError(ValueError):
    """A dataset setting or folder that cannot be used. The message names the field or file."""


@dataclass
class DataOptions:
    """The dataset part of a run's settings: a view of the matching `TrainConfig` fields, with the
    same names and defaults (`TrainConfig.data_options()` builds it).

    It has no rules of its own: `validate()` applies `TrainConfig.validate()`, so a value is
    judged the same way whether it comes from a config or is built here directly.
    """

    template: str = "subject_filewords"  # a template name (textual_inversion_templates) or a path
    shuffle_tags: bool = False  # shuffle the caption's comma-separated tags on every fetch
    tag_dropout: float = 0.0  # each tag (after the first keep_tags) is dropped with this probability
    keep_tags: int = 0  # the first K tags are never shuffled nor dropped (e.g. a trigger or class word)
    repeats: int = 1  # each image appears this many times per epoch
    flip_p: float = 0.0  # probability of a horizontal flip per fetch (the loop draws it)
    resolution: int = 512  # square side, or the bucket area's side when bucketing
    bucketing: bool = False  # False: scale to cover a square and center-crop (never stretch)
    no_upscale: bool = True  # bucketing: small images keep their size (rounded down to the step)
    alpha_weight: bool = False  # use PNG alpha as the per-pixel loss weight
    filename_regex: str = ""  # captions from file names: keep only the matches of this regex
    join_string: str = " "  # ... joined with this
    bucket_step: int = 64  # bucket sides are multiples of this (at resolution 512; scales with it)
    min_bucket: int = 256
    max_bucket: int = 1024

    def validate(self) -> DataOptions:
        """Raise DataError naming the first bad field (TrainConfig's rules); return self for chaining."""
        try:
            TrainConfig(**asdict(self)).validate()
        except ConfigError as e:
            raise DataError(str(e)) from None
        return self


@dataclass
class ImageRecord:
    """One usable training image. ``width``/``height`` are after EXIF orientation."""

    path: Path
    caption: str
    width: int
    height: int
    has_alpha: bool
    bucket: tuple[int, int]  # (width, height) the pixels are cropped to; both divisible by 8
    caption_source: str  # "txt" or "filename"


# --- captions ---------------------------------------------------------------------------------


def caption_from_filename(stem: str, regex: str = "", join: str = " ") -> str:
    """A1111's rule: drop leading numbers/dashes (and the space after), then optionally keep
    only the regex matches, joined. With capture groups the groups are used (non-empty ones),
    where A1111 crashed on the tuples ``re.findall`` returns."""
    text = _LEADING_NUMBERS.sub("", stem)
    if not regex:
        return text
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise DataError(f"filename_regex {regex!r} is not a valid regular expression: {e}") from None
    words: list[str] = []
    for m in pattern.finditer(text):
        if pattern.groups:
            words.extend(g for g in m.groups() if g)
        elif m.group(0):
            words.append(m.group(0))
    return join.join(words)


def read_caption(image_path: Path, opts: DataOptions) -> tuple[str, str, str | None]:
    """(caption, source, problem): the ``.txt`` beside the image, else the file name.

    A caption file that cannot be read falls back to the file name and says why.
    """
    txt = image_path.with_suffix(CAPTION_SUFFIX)
    if txt.is_file():
        try:
            return " ".join(txt.read_text(encoding="utf-8-sig").split()), "txt", None
        except UnicodeDecodeError as e:
            problem = f"caption is not UTF-8 text ({e.reason} at byte {e.start}); used the file name instead"
        except OSError as e:
            problem = f"caption cannot be read ({e.strerror or e}); used the file name instead"
        return caption_from_filename(image_path.stem, opts.filename_regex, opts.join_string), "filename", problem
    return caption_from_filename(image_path.stem, opts.filename_regex, opts.join_string), "filename", None


# --- sizes and buckets ------------------------------------------------------------------------


def _floor_to(n: float, step: int) -> int:
    return int(math.floor(n / step + 1e-9)) * step


def bucket_params(opts: DataOptions) -> tuple[int, int, int]:
    """(step, smallest side, largest side) in pixels, scaled from the 512-based settings."""
    scale = opts.resolution / 512
    step = min(opts.bucket_step, max(8, _floor_to(opts.bucket_step * scale, 8)))
    lo = max(step, _floor_to(opts.min_bucket * scale, step))
    hi = max(lo, _floor_to(opts.max_bucket * scale, step), _floor_to(opts.resolution, step))
    return step, lo, hi


def bucket_sizes(opts: DataOptions) -> list[tuple[int, int]]:
    """The bucket list used when upscaling is allowed: sides in [lo, hi] on the step grid, area
    at most resolution squared, each as large as the area allows; the square is always there."""
    step, lo, hi = bucket_params(opts)
    area = opts.resolution * opts.resolution
    sizes = {(_floor_to(opts.resolution, step),) * 2}
    for w in range(lo, hi + 1, step):
        h = min(hi, _floor_to(area / w, step))
        if h >= lo:
            sizes.add((w, h))
            sizes.add((h, w))
    return sorted(sizes)


def choose_bucket(width: int, height: int, opts: DataOptions) -> tuple[int, int]:
    """The (w, h) an image of this size trains at. Raises DataError when it is too small."""
    if not opts.bucketing:
        return opts.resolution, opts.resolution
    step, _, hi = bucket_params(opts)
    aspect = math.log(width / height)
    if not opts.no_upscale:
        return min(bucket_sizes(opts), key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))
    area = opts.resolution * opts.resolution
    s = min(1.0, math.sqrt(area / (width * height)), hi / max(width, height))
    top_w, top_h = _floor_to(width * s, step), _floor_to(height * s, step)
    if top_w < step or top_h < step:
        raise DataError(f"{width}x{height} is smaller than one bucket step ({step} px) and no_upscale is on")
    # Flooring both sides can distort the aspect a lot (1024x768 -> 576x384 is 3:2); weigh the
    # picture cropped away against the resolution given up and keep the best grid size.
    full = width * s * height * s

    def cost(b: tuple[int, int]) -> tuple[float, int]:
        crop = 1.0 - min(b[0] / b[1] * height / width, b[1] / b[0] * width / height)
        return crop + (1.0 - b[0] * b[1] / full), -b[0] * b[1]

    grid = [(bw, bh) for bw in range(step, top_w + 1, step) for bh in range(step, top_h + 1, step)]
    return min(grid, key=cost)


# --- pixels -----------------------------------------------------------------------------------


def _open(path: Path, keep_alpha: bool) -> LoadedImage:
    return open_image(path, keep_alpha=keep_alpha, background=WHITE)


def _fit(img: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Scale to cover the bucket, center-crop to it (same plan for pixels and alpha)."""
    plan = plan_cover(img.width, img.height, bucket[0], bucket[1], upscale=True)
    return apply_plan(img, plan)[0]


def _split_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """RGB composited on white, plus the alpha band (None for images without one)."""
    if img.mode != "RGBA":
        return img.convert("RGB"), None
    base = Image.new("RGBA", img.size, (*WHITE, 255))
    return Image.alpha_composite(base, img).convert("RGB"), img.getchannel("A")


def alpha_weight(alpha: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Loss weight from an alpha map (HxW, 0..255 or 0..1): alpha / mean(alpha).

    The mean over the image is 1, transparent pixels weigh 0, a uniform alpha gives exactly
    ones (A1111 subtracted the minimum first, which made an opaque image 0/0 = NaN). Raises
    DataError for an all-transparent map: nothing in it could be learned.
    """
    a = torch.as_tensor(np.asarray(alpha) if not isinstance(alpha, torch.Tensor) else alpha).to(torch.float64)
    if a.ndim != 2:
        raise ValueError(f"alpha must be HxW, got shape {tuple(a.shape)}")
    if not torch.isfinite(a).all() or (a < 0).any():
        raise DataError("alpha has negative or non-finite values")
    if float(a.max()) <= 0:
        raise DataError("fully transparent: with alpha weights on nothing in it could be learned")
    if float(a.min()) == float(a.max()):
        return torch.ones(a.shape, dtype=torch.float32)
    return (a / a.mean()).to(torch.float32)


def load_pixels(rec: ImageRecord, opts: DataOptions, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CHW float32 pixels in [-1, 1] at ``rec.bucket``, and the alpha loss weight (HxW, same
    size as the pixels, mean 1) or None when alpha weighting is off or the image has no alpha.

    The latent cache downsamples the weight to the latent grid (area mean keeps the mean 1).
    """
    loaded = _open(rec.path, keep_alpha=opts.alpha_weight)
    rgb, alpha = _split_alpha(loaded.image)
    rgb = _fit(rgb, rec.bucket)
    if flip:
        rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(rgb, dtype=np.uint8)
    pixels = torch.from_numpy(arr.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()
    if not opts.alpha_weight or not (rec.has_alpha or alpha is not None):
        return pixels, None
    if alpha is None:  # an alpha band that was fully opaque: every pixel weighs 1
        return pixels, torch.ones(rec.bucket[1], rec.bucket[0], dtype=torch.float32)
    alpha = _fit(alpha, rec.bucket)
    if flip:
        alpha = alpha.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    try:
        weight = alpha_weight(np.asarray(alpha, dtype=np.float32))
    except DataError as e:
        raise DataError(f"{rec.path.name}: {e} (after cropping to {rec.bucket[0]}x{rec.bucket[1]})") from None
    return pixels, weight


# --- scanning ---------------------------------------------------------------------------------


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_dataset(folder: Path, opts: DataOptions) -> tuple[list[ImageRecord], list[tuple[Path, str]]]:
    """Every usable image under ``folder`` (recursive, sorted) and the skipped files with reasons.

    Never raises for a bad image: it goes to the skipped list. Raises DataError only when the
    folder itself is missing or the options are invalid.
    """
    opts.validate()
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"dataset folder {str(folder)!r} does not exist or is not a folder")
    remove_stale_temps(folder, recursive=True)  # a killed preprocess run's half-written images
    records: list[ImageRecord] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(folder.rglob("*")):
        if _hidden(path, folder) or path.is_dir():
            continue
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            if suffix not in _SIDECAR_SUFFIXES:
                skipped.append((path, f"not an image (unsupported type {suffix or 'without extension'!r})"))
            continue
        try:
            loaded = _open(path, keep_alpha=opts.alpha_weight)
            w, h = loaded.image.size
            bucket = choose_bucket(w, h, opts)
            if opts.alpha_weight and loaded.image.mode == "RGBA":
                alpha = _fit(loaded.image.getchannel("A"), bucket)
                if alpha.getextrema()[1] == 0:
                    where = " left after cropping" if loaded.image.getchannel("A").getextrema()[1] else ""
                    raise DataError(f"no opaque pixel{where}: with alpha weights on nothing in it could be learned")
        except (ImageReadError, DataError) as e:
            skipped.append((path, str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - one odd file must never stop the scan
            skipped.append((path, f"cannot be used ({type(e).__name__}: {e})"))
            continue
        caption, source, problem = read_caption(path, opts)
        if problem:
            skipped.append((path.with_suffix(CAPTION_SUFFIX), problem))
        records.append(ImageRecord(path, caption, w, h, loaded.had_alpha, bucket, source))
    return records, skipped


# --- prompts ----------------------------------------------------------------------------------


def _tidy(text: str) -> str:
    """Remove the empty separators a dropped-out or empty caption leaves behind."""
    text = re.sub(r"\s*,(\s*,)+", ",", text)
    text = re.sub(r"[ \t]{2,}", " ", text)
    return text.strip().strip(",").strip()


class PromptBuilder:
    """Builds the prompt for one fetch: a template line drawn uniformly every time, the caption's
    tags shuffled and dropped out after the first ``keep_tags``. All randomness comes from
    ``rng`` in a fixed order, so a resumed run with the same RNG state builds the same prompts.
    """

    def __init__(self, lines: list[str], name: str, opts: DataOptions, rng: random.Random):
        if not lines:
            raise DataError("the prompt template has no lines")
        self.lines = list(lines)
        self.name = name
        self.opts = opts
        self.rng = rng

    def filewords(self, caption: str) -> str:
        opts = self.opts
        if not opts.shuffle_tags and opts.tag_dropout <= 0:
            return caption.strip()
        tags = [t.strip() for t in caption.split(",")]
        tags = [t for t in tags if t]
        fixed, rest = tags[: opts.keep_tags], tags[opts.keep_tags :]
        if opts.tag_dropout > 0:
            rest = [t for t in rest if self.rng.random() >= opts.tag_dropout]
        if opts.shuffle_tags:
            self.rng.shuffle(rest)
        return ", ".join(fixed + rest)

    def build(self, caption: str) -> str:
        line = self.rng.choice(self.lines)
        return _tidy(render(line, self.name, self.filewords(caption)))


# --- batching ---------------------------------------------------------------------------------


class EpochSampler:
    """Batches of record indices for one epoch: every batch from one bucket, each image
    ``repeats`` times, incomplete batches dropped (per bucket), order shuffled.

    An epoch depends only on (seed, epoch), so resuming mid-epoch replays the same order.
    Each repeat is its own permutation, so an image appears twice in a batch only where two
    repeats meet.
    """

    def __init__(self, records: list[ImageRecord], batch_size: int, repeats: int, seed: int):
        if batch_size < 1:
            raise DataError(f"batch_size must be at least 1 (got {batch_size})")
        if repeats < 1:
            raise DataError(f"repeats must be at least 1 (got {repeats})")
        self.batch_size = batch_size
        self.repeats = repeats
        self.seed = seed
        self.groups: dict[tuple[int, int], list[int]] = {}
        for i, rec in enumerate(records):
            self.groups.setdefault(rec.bucket, []).append(i)
        if not self.groups:
            raise DataError("no images to sample from")
        if self.batches_per_epoch == 0:
            sizes = ", ".join(f"{w}x{h}: {len(ix)}" for (w, h), ix in sorted(self.groups.items()))
            raise DataError(
                f"batch_size {batch_size} is larger than every bucket times repeats ({sizes}; repeats {repeats}); "
                "lower the batch size or raise repeats"
            )

    @property
    def batches_per_epoch(self) -> int:
        return sum(len(ix) * self.repeats // self.batch_size for ix in self.groups.values())

    @property
    def dropped_per_epoch(self) -> int:
        """Fetches per epoch that do not fit a full batch (different images each epoch)."""
        return sum(len(ix) * self.repeats % self.batch_size for ix in self.groups.values())

    def epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(f"epoch-sampler:{self.seed}:{epoch}")
        batches: list[list[int]] = []
        for bucket in sorted(self.groups):
            order: list[int] = []
            for _ in range(self.repeats):
                ix = self.groups[bucket][:]
                rng.shuffle(ix)
                order.extend(ix)
            full = len(order) - len(order) % self.batch_size
            batches.extend(order[i : i + self.batch_size] for i in range(0, full, self.batch_size))
        rng.shuffle(batches)
        return batches


# --- the dataset check ------------------------------------------------------------------------


@dataclass
class DatasetReport:
    """What a run would train on, shown before it starts. ``ok`` False means: do not start."""

    images: int
    skipped: list[tuple[str, str]]
    sizes: dict[str, int]  # "WxH" of the source images -> count
    buckets: dict[str, int]  # "WxH" trained at -> count
    missing_captions: int  # images captioned from their file name (no .txt)
    sample_prompts: list[str]
    ok: bool
    problems: list[str]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> list[str]:
        """One line per fact, for the CLI, a log panel or a Markdown list."""
        out = [
            ("ready to train" if self.ok else "cannot train")
            + f": {self.images} image(s), {len(self.skipped)} skipped, {self.missing_captions} without a .txt caption"
        ]
        if self.sizes:
            out.append("sizes: " + ", ".join(f"{k} ({v})" for k, v in self.sizes.items()))
        if self.buckets:
            out.append("trained at: " + ", ".join(f"{k} ({v})" for k, v in self.buckets.items()))
        out += [f"problem: {p}" for p in self.problems]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"skipped {p}: {r}" for p, r in self.skipped]
        out += [f"prompt: {p}" for p in self.sample_prompts]
        return out

    def summary(self) -> str:
        return "\n".join(self.describe())


def _contains_name(prompt: str, name: str, tokenizer, matcher) -> bool:
    if tokenizer is None:
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", prompt, re.IGNORECASE) is not None
    return any(m.name == name for m in matcher.find(tokenize_plain(tokenizer, prompt)))


def check_dataset(
    folder: Path,
    opts: DataOptions | None = None,
    name: str = "",
    tokenizer=None,
    n_samples: int = 8,
    seed: int = 0,
    *,
    templates_dir: Path | None = None,
    scanned: tuple[list[ImageRecord], list[tuple[Path, str]]] | None = None,
) -> DatasetReport:
    """Scan the folder, build sample prompts, and say whether training can start.

    Refuses (``ok=False``) when there is no image or when no prompt holds the embedding's name.
    With a tokenizer the name must appear as its own tokens (as the trainer will find it):
    "a photo of [name]s" renders "mycats", which does not tokenize to "mycat" and trains nothing.
    ``templates_dir`` is the user's template folder (as for ``load_template``); ``scanned`` is
    a ``scan_dataset`` result to reuse, so a caller that needs the records decodes images once.
    """
    opts = opts or DataOptions()
    problems: list[str] = []
    warnings: list[str] = []
    try:
        records, skipped = scanned if scanned is not None else scan_dataset(folder, opts)
    except DataError as e:
        return DatasetReport(0, [], {}, {}, 0, [], False, [str(e)])
    report = DatasetReport(
        images=len(records),
        skipped=[(str(p), r) for p, r in skipped],
        sizes=dict(Counter(f"{r.width}x{r.height}" for r in records).most_common()),
        buckets=dict(Counter(f"{r.bucket[0]}x{r.bucket[1]}" for r in records).most_common()),
        missing_captions=sum(r.caption_source != "txt" for r in records),
        sample_prompts=[],
        ok=False,
        problems=problems,
        warnings=warnings,
    )
    if not records:
        problems.append(f"no usable image in {folder}" + (f" ({len(skipped)} file(s) skipped)" if skipped else ""))
    if not name or not name.strip():
        problems.append("the embedding name is empty")
    try:
        lines = load_template(opts.template, templates_dir)
    except TemplateError as e:
        problems.append(str(e))
        return report
    if problems:
        return report

    matcher = None
    if tokenizer is not None:
        matcher = NameMatcher(tokenizer, [name])
    caption = next((r.caption for r in records if r.caption), "")
    good_lines = [ln for ln in lines if _contains_name(render(ln, name, caption), name, tokenizer, matcher)]
    if not good_lines:
        problems.append(
            f"no prompt from template {opts.template!r} contains the name {name!r} as its own token(s), "
            "so the embedding could not learn; fix the template lines or the name"
        )
    else:
        blind = [ln for ln in lines if ln not in good_lines]
        if blind:
            warnings.append(f"{len(blind)} of {len(lines)} template line(s) do not put the name in the prompt, e.g. {blind[0]!r}")

    rng = random.Random(seed)
    builder = PromptBuilder(lines, name, opts, random.Random(seed))
    picks = sorted(rng.sample(range(len(records)), min(n_samples, len(records))))
    report.sample_prompts = [builder.build(records[i].caption) for i in picks]
    if tokenizer is not None:
        long = [p for p in report.sample_prompts if len(tokenize_plain(tokenizer, p)) > MAX_PROMPT_TOKENS]
        if long:
            warnings.append(
                f"{len(long)} sample prompt(s) are longer than {MAX_PROMPT_TOKENS} tokens (before the "
                "embedding's extra vectors); the end is cut off"
            )
    if records and all(r.caption_source == "txt" and not r.caption for r in records) and "[filewords]" in " ".join(lines):
        warnings.append("every caption file is empty, so [filewords] adds nothing")
    small = sum(1 for r in records if max(r.bucket[0] / r.width, r.bucket[1] / r.height) > 1.0)
    if small:
        warnings.append(f"{small} image(s) are smaller than their training size and will be upscaled")
    report.ok = not problems
    return report
