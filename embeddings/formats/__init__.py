"""Every embedding file format, read and write, behind two calls: `load_embedding` and `save_embedding`.

Readable: A1111 `.pt` (also the original TI repo's ParameterDict files), kohya/A1111 SDXL `.pt`,
diffusers `.bin` / `.safetensors` (one file, or the SDXL `X` + `X_2` pair), our and kohya's
`.safetensors`, and image embeddings (PNG text chunk or pixel data; WebP and other lossless
images through the pixels). Writable (`FORMATS`): `safetensors`, `pt`, `diffusers`, `png`.

Loaded tensors are detached CPU float32. `metadata["format"]` says what was read:
"a1111-pt", "sdxl-pt", "kohya-pt", "diffusers-bin", "diffusers-safetensors" (with "-sdxl-pair"
appended for a two-file SDXL pair), "safetensors", "png-chunk", "png-pixels", "webp-pixels" ...
and `metadata["sha256"]` is the file's SHA-256 (A1111 shows its first 12 digits).

Embeddings with NaN/inf values load (so `inspect` can show them) with `is_finite()` False; the
library refuses to use them. Everything else that is wrong raises `EmbeddingFileError(path,
reason)`. Writes are atomic; round trips are bit-exact in float32.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.formats.a1111_pt import load_pickle_embedding, save_pt
from embeddings.formats.diffusers_format import (
    combine_pair,
    is_pair,
    pair_partner,
    save_diffusers,
)
from embeddings.formats.png_embed import IMAGE_EMBEDDING_SUFFIXES, load_image_embedding, save_png
from embeddings.formats.safetensors_format import load_safetensors_embedding, save_safetensors
from embeddings.kinds import kind_of
from embeddings.names import clean_name

FORMATS: list[str] = ["safetensors", "pt", "diffusers", "png"]

FORMAT_HELP: dict[str, str] = {
    "safetensors": "safetensors with our metadata (A1111, Forge, ComfyUI; diffusers with token=)",
    "pt": "A1111 .pt (A1111, Forge, ComfyUI, diffusers)",
    "diffusers": "diffusers {token: tensor} .bin (SDXL: a _2 file for the second encoder)",
    "png": "PNG image that carries the embedding (A1111 image embedding)",
}

PICKLE_SUFFIXES = (".pt", ".bin")
# Every file type that can hold an embedding: the library, the UI and the trainer look for these.
EMBEDDING_SUFFIXES = (*PICKLE_SUFFIXES, ".safetensors", *IMAGE_EMBEDDING_SUFFIXES)

_WRITE_SUFFIXES: dict[str, tuple[str, ...]] = {
    "safetensors": (".safetensors",),
    "pt": (".pt",),
    "diffusers": (".bin", ".safetensors"),
    "png": (".png",),
}
_EXPORT_SUFFIX = {"safetensors": ".safetensors", "pt": ".pt", "diffusers": ".bin", "png": ".png"}

__all__ = [
    "EMBEDDING_SUFFIXES",
    "FORMATS",
    "FORMAT_HELP",
    "export_name",
    "format_for_path",
    "is_image_format",
    "load_embedding",
    "load_embedding_pair",
    "save_embedding",
    "writable_formats",
]


def _sniff(path: Path, head: bytes) -> str | None:
    """The container by content (so a mislabelled file still reads), or None if unrecognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    # safetensors before pickle: its first 8 bytes are the header length, whose low bytes can be
    # anything, 0x80 (one header in 256) or "PK" included; a zip or torch pickle never has "{" at 8
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n < 100_000_000:
            return "safetensors"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80" or head.startswith(b"\x8a\x0a"):
        return "pickle"
    suffix = path.suffix.lower()
    if suffix in IMAGE_EMBEDDING_SUFFIXES:
        return "image"  # avif/jxl have other magic; let PIL decide
    return None


def _check_readable(path: Path) -> bytes:
    if not path.exists():
        raise EmbeddingFileError(path, "broken link (its target does not exist)" if path.is_symlink() else "no such file")
    if path.is_dir():
        raise EmbeddingFileError(path, "is a folder, not a file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise EmbeddingFileError(path, f"cannot read the file ({e.strerror or e})") from None
    if size == 0:
        raise EmbeddingFileError(path, "empty file (0 bytes)")
    return head


def _load_single(path: Path) -> Embedding:
    head = _check_readable(path)
    kind = _sniff(path, head)
    if kind == "pickle":
        emb = load_pickle_embedding(path)
    elif kind == "safetensors":
        emb = load_safetensors_embedding(path)
    elif kind == "image":
        emb = load_image_embedding(path)
    else:
        raise EmbeddingFileError(path, "not an embedding file (neither a torch, safetensors nor image file)")
    emb.metadata["sha256"] = _sha256(path)
    return emb


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_embedding(path: str | Path) -> Embedding:
    """Read any supported embedding file. Raises EmbeddingFileError naming the file and the reason.

    A diffusers SDXL pair is detected from either half's neighbour: `X.bin` + `X_2.bin` loads
    as one SDXL embedding from `X.bin`; `X_2.bin` alone is refused, pointing at `X.bin`.
    """
    path = Path(path)
    emb = _load_single(path)
    if not emb.metadata.get("format", "").startswith("diffusers") or len(emb.vectors) != 1:
        return emb
    second, first = pair_partner(path)
    if first is not None:
        try:
            other = _load_single(first)
        except EmbeddingFileError:
            other = None
        if other is not None and is_pair(other, emb):
            raise EmbeddingFileError(
                path, f"second half (clip_g) of the SDXL pair with {first.name}; it is read through that file"
            )
    if second is not None:
        try:
            other = _load_single(second)
        except EmbeddingFileError:
            return emb
        if is_pair(emb, other):
            return combine_pair(emb, other, path, second)
    return emb


def load_embedding_pair(path_l: str | Path, path_g: str | Path) -> Embedding:
    """An SDXL embedding from diffusers' two files: CLIP-L (768) then CLIP-G (1280), same token.

    Both files are named, so any widths are accepted (the tiny SDXL model's are 32 and 64).
    """
    path_l, path_g = Path(path_l), Path(path_g)
    return combine_pair(_load_single(path_l), _load_single(path_g), path_l, path_g, sdxl_widths=False)


def is_image_format(fmt: str | None) -> bool:
    """Whether a `metadata["format"]` label ("png-chunk", "webp-pixels" ...) is an image embedding's.

    An image embedding's name lives inside the file, not in its file name."""
    return bool(fmt) and f".{fmt.split('-')[0]}" in IMAGE_EMBEDDING_SUFFIXES


def format_for_path(path: str | Path) -> str:
    """The writable format a file name implies: .safetensors, .pt, .bin (diffusers) or .png."""
    suffix = Path(path).suffix.lower()
    for fmt in ("safetensors", "pt", "png"):
        if suffix in _WRITE_SUFFIXES[fmt]:
            return fmt
    if suffix == ".bin":
        return "diffusers"
    raise EmbeddingError(f"{Path(path).name}: cannot tell the format from {suffix or 'no suffix'!r}; "
                         f"use .safetensors, .pt, .bin or .png, or name a format ({', '.join(FORMATS)})")


def save_embedding(emb: Embedding, path: str | Path, fmt: str | None = None, *, preview=None,
                   caption: bool = True) -> Path:
    """Write `emb` atomically and return the path written (for an SDXL diffusers pair, the first file).

    `fmt` is one of FORMATS, or None to infer it from the suffix. `preview` (PIL image or path)
    is the picture for PNG; without it a plain picture is drawn. `caption` overlays name, base
    model and "Nv Ss" on the PNG picture, as A1111 does.
    """
    path = Path(path)
    fmt = fmt or format_for_path(path)
    if fmt not in FORMATS:
        raise EmbeddingError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    suffix = path.suffix.lower()
    known = {s for suffixes in _WRITE_SUFFIXES.values() for s in suffixes}
    if suffix == f".{fmt}" and suffix not in _WRITE_SUFFIXES[fmt]:  # "name.diffusers" -> "name.bin"
        path = path.with_suffix(_EXPORT_SUFFIX[fmt])
    elif suffix not in known:  # no suffix, or a dot inside the name ("v1.5-style")
        path = path.with_name(path.name + _EXPORT_SUFFIX[fmt])
    if path.suffix.lower() not in _WRITE_SUFFIXES[fmt]:
        raise EmbeddingError(f"{path.name}: a {fmt} file must end in {' or '.join(_WRITE_SUFFIXES[fmt])}")
    if fmt not in writable_formats(emb):
        kind = kind_of(emb)
        raise EmbeddingError(f"{path.name}: not written: {emb.name!r} is a {kind.label} embedding, which has no "
                             f"standard part (its vectors are not token embeddings), so a {fmt} file would load as "
                             f"something else in other tools; it is kept whole only in .safetensors, which only this "
                             f"program reads")
    if fmt == "safetensors":
        return save_safetensors(emb, path)
    if fmt == "pt":
        return save_pt(emb, path)
    if fmt == "diffusers":
        return save_diffusers(emb, path)
    return save_png(emb, path, preview, caption=caption)


def writable_formats(emb: Embedding) -> list[str]:
    """The formats that hold `emb` without misleading other tools: all of FORMATS for a kind with a
    standard part; only our .safetensors for one without (direct)."""
    return list(FORMATS) if kind_of(emb).standard_part else ["safetensors"]


def export_name(emb: Embedding, fmt: str) -> str:
    """A file name for downloading `emb` as `fmt`; the stem is the name other tools will use."""
    if fmt not in FORMATS:
        raise EmbeddingError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    stem = clean_name(emb.name) or "embedding"
    return stem + _EXPORT_SUFFIX[fmt]
