"""Caption text: sidecar files, the existing-caption policy, captions in file names, and the
small editor API the UI puts a grid on.

The caption of `foo.png` lives in `foo.txt` beside it (UTF-8, one line). Every write is atomic,
so an edit interrupted half way leaves the old caption, never an empty file.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from preprocessing.images import is_image_name
from workspace.atomic import atomic_write_text

EXISTING_POLICIES = ("ignore", "keep", "prepend", "append")
CAPTION_TARGETS = ("sidecar", "filename")
JOINER = ", "  # so tag shuffling at training time sees the parts as separate tags

_FILENAME_CAPTION_BYTES = 150  # well under the 255-byte name limit of common file systems
_BAD_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')


def caption_path(image_path: str | Path) -> Path:
    """Where the caption of an image lives: same folder, same stem, `.txt`."""
    return Path(image_path).with_suffix(".txt")


def read_caption(image_path: str | Path) -> str | None:
    """The sidecar caption, stripped and on one line; None when there is no sidecar.

    A sidecar that is not UTF-8 is read leniently (bad bytes replaced) rather than lost.
    """
    p = caption_path(image_path)
    try:
        raw = p.read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    return clean_caption(raw.decode("utf-8", errors="replace"))


def clean_caption(text: str | None) -> str:
    """One line, single spaces, no BOM, stripped."""
    if not text:
        return ""
    return " ".join(text.replace("\ufeff", "").split())


def join_caption(*parts: str | None) -> str:
    """Parts joined with ", ": a part's own leading/trailing commas go ("walkcat, " + "a cat" is
    "walkcat, a cat", not "walkcat,, a cat")."""
    return JOINER.join(p for p in (_part(x) for x in parts) if p)


def _part(text: str | None) -> str:
    return clean_caption(text).strip(" ,")


def compose_caption(generated: str | None, existing: str | None, policy: str = "ignore",
                    prefix: str = "", suffix: str = "") -> str:
    """The caption written for one image.

    Policies (A1111's names and order):
    - ignore: the generated caption only;
    - keep: the existing caption when there is one (no captioning needed), else the generated one;
    - prepend: existing first, then generated;
    - append: generated first, then existing.
    Then `prefix` and `suffix` (e.g. a trigger word) go around it, joined with ", ".
    """
    if policy not in EXISTING_POLICIES:
        raise ValueError(f"existing-caption policy {policy!r} is not one of {', '.join(EXISTING_POLICIES)}")
    generated, existing = clean_caption(generated), clean_caption(existing)
    if policy == "keep":
        body = existing or generated
    elif policy == "prepend":
        body = join_caption(existing, generated)
    elif policy == "append":
        body = join_caption(generated, existing)
    else:
        body = generated
    body, prefix, suffix = _part(body), _part(prefix), _part(suffix)
    # re-running with the same trigger word must not stack it ("sks, sks, a cat")
    if prefix and (body == prefix or body.startswith(prefix + JOINER.strip()) or body.startswith(prefix + " ")):
        prefix = ""
    if suffix and (body == suffix or body.endswith(JOINER.strip() + " " + suffix) or body.endswith(" " + suffix)):
        suffix = ""
    return join_caption(prefix, body, suffix)


def caption_to_filename(caption: str, max_bytes: int = _FILENAME_CAPTION_BYTES) -> str:
    """A caption made safe as (part of) a file name on Windows, macOS and Linux.

    Path separators and reserved characters become spaces; the result is cut at a word
    boundary to `max_bytes` of UTF-8 and never ends in a dot or space (Windows drops those).
    """
    text = unicodedata.normalize("NFC", clean_caption(_BAD_NAME_CHARS.sub(" ", caption)))
    text = " ".join(text.split())
    if len(text.encode("utf-8")) > max_bytes:
        cut = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        text = cut.rsplit(" ", 1)[0] if " " in cut else cut
    return text.strip(" .")


def write_caption(image_path: str | Path, text: str) -> Path:
    """Atomically write the sidecar of `image_path` (a trailing newline, UTF-8)."""
    return atomic_write_text(caption_path(image_path), clean_caption(text) + "\n")


# --- the caption editor API --------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionItem:
    """One image of a dataset folder and its caption ("" and has_caption=False when none)."""

    path: Path
    caption: str
    has_caption: bool

    @property
    def caption_path(self) -> Path:
        return caption_path(self.path)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "caption": self.caption, "has_caption": self.has_caption}


def list_captions(folder: str | Path, *, recursive: bool = False) -> list[CaptionItem]:
    """Every image in `folder` (sorted by name) with its sidecar caption.

    Hidden files and folders (`.ipynb_checkpoints`, our own temp files) are left out.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"caption folder {folder} does not exist or is not a folder")
    pattern = "**/*" if recursive else "*"
    items = []
    for p in sorted(folder.glob(pattern)):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not is_image_name(p) or not p.is_file():
            continue
        text = read_caption(p)
        items.append(CaptionItem(path=p, caption=text or "", has_caption=text is not None))
    return items


def set_caption(image_path: str | Path, text: str) -> CaptionItem:
    """Change one image's caption (atomic). The image itself is never touched."""
    image_path = Path(image_path)
    if not is_image_name(image_path):
        raise ValueError(f"{image_path} is not an image file (expected one of the image suffixes)")
    if not image_path.is_file():
        raise FileNotFoundError(f"{image_path} does not exist: cannot caption a missing image")
    write_caption(image_path, text)
    return CaptionItem(path=image_path, caption=clean_caption(text), has_caption=True)
