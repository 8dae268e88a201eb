"""`PreprocessOptions`: every preprocessing choice in one value the UI form, the CLI and the
job all share (and that can be saved beside a dataset as JSON)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from preprocessing.captioners import DEFAULT_BLIP
from preprocessing.captions import CAPTION_TARGETS, EXISTING_POLICIES
from preprocessing.geometry import CROP_MODES
from preprocessing.images import DEFAULT_MAX_ASPECT, DEFAULT_MAX_PIXELS, parse_color

CAPTIONERS = ("none", "blip")
ON_EXISTING = ("skip", "overwrite", "new_folder")
OUTPUT_FORMATS = ("png", "jpg", "webp")


@dataclass
class PreprocessOptions:
    """What to do with each image. Defaults: 512x512 centre crop, PNG, no captioner."""

    # size and crop
    width: int = 512
    height: int = 512
    crop: str = "center"  # center | fit | focal | keep
    upscale: bool = False  # enlarge images smaller than the target (otherwise keep their size, report them)
    multiple_of: int = 8  # output sides are trimmed to a multiple of this (the VAE needs 8)
    split: bool = False  # split images far from the target aspect into overlapping crops (A1111)
    split_threshold: float = 0.5
    split_overlap: float = 0.2
    focal_edges_weight: float = 0.5
    focal_entropy_weight: float = 0.15
    flip: bool = False  # also save a mirrored copy of every output (same caption)
    # pixels
    keep_alpha: bool = False  # keep transparency (RGBA PNG) for alpha-weighted loss
    background: str = "#ffffff"  # colour under transparent pixels when alpha is not kept
    output_format: str = "png"  # png | jpg | webp (images with kept alpha are always png)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_aspect: float = DEFAULT_MAX_ASPECT
    # captions
    captioner: str = "none"  # none | blip
    blip_model: str = DEFAULT_BLIP  # hub id, local folder, or "tiny-blip"
    device: str = "auto"
    caption_batch_size: int = 8
    caption_max_tokens: int = 30
    caption_beams: int = 3
    allow_download: bool = False
    caption_to: str = "sidecar"  # sidecar (.txt beside the image) | filename (A1111 style)
    existing_caption: str = "ignore"  # ignore | keep | prepend | append (the source's .txt)
    prefix: str = ""
    suffix: str = ""
    caption_only: bool = False  # caption the source folder in place: writes only .txt files
    # folders
    on_existing: str = "skip"  # skip | overwrite | new_folder (when outputs already exist)
    recursive: bool = True
    cache_dir: str | None = None  # where helper models (tiny-blip) are built; the data folder's cache

    def validate(self) -> PreprocessOptions:
        """Raise ValueError naming the first bad option; return self when all is well."""
        _choice("crop", self.crop, CROP_MODES)
        _choice("captioner", self.captioner, CAPTIONERS)
        _choice("caption_to", self.caption_to, CAPTION_TARGETS)
        _choice("existing_caption", self.existing_caption, EXISTING_POLICIES)
        _choice("on_existing", self.on_existing, ON_EXISTING)
        _choice("output_format", self.output_format, OUTPUT_FORMATS)
        for name in ("width", "height"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 8 <= v <= 8192:
                raise ValueError(f"{name} must be a whole number of pixels from 8 to 8192 (got {v!r})")
        if self.multiple_of < 1:
            raise ValueError(f"multiple_of must be at least 1 (got {self.multiple_of})")
        if not 0.0 <= self.split_threshold <= 1.0:
            raise ValueError(f"split_threshold must be between 0 and 1 (got {self.split_threshold})")
        if not 0.0 <= self.split_overlap <= 0.9:
            raise ValueError(f"split_overlap must be between 0 and 0.9 (got {self.split_overlap})")
        if self.caption_batch_size < 1:
            raise ValueError(f"caption_batch_size must be at least 1 (got {self.caption_batch_size})")
        if self.max_pixels < 0 or self.max_aspect < 0:
            raise ValueError("max_pixels and max_aspect must not be negative (0 turns the check off)")
        if self.caption_only and not self.wants_captions and self.existing_caption == "ignore":
            raise ValueError("caption-only with no captioner and existing_caption=ignore would replace every "
                             "caption: pick a captioner, or existing_caption keep/prepend/append to add a prefix/suffix")
        parse_color(self.background)
        return self

    @property
    def background_rgb(self) -> tuple[int, int, int]:
        return parse_color(self.background)

    @property
    def wants_captions(self) -> bool:
        return self.captioner != "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessOptions:
        """Build from a dict (saved JSON, a UI form). Unknown keys are an error, not ignored,
        so a typo never silently falls back to a default."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing option(s): {', '.join(unknown)}")
        return cls(**data).validate()


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")
