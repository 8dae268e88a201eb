"""Image embeddings: an embedding carried inside a PNG (or read from WebP and other lossless images).

This is A1111's scheme byte for byte, so files A1111 writes read here and files written here
read in A1111:

- **Text chunk.** A `tEXt` chunk with keyword `sd-ti-embedding` holding
  `base64(json.dumps(payload))`, where every tensor is `{"TORCHTENSOR": nested list}` (default
  `json.dumps` separators; float32 values widened to double, so they round-trip exactly).
- **Pixel data embed.** The same JSON, zlib level 9, split into low and high nibbles, each
  nibble stream repeated cyclically to fill an (h, W, 3) block, decorated (cosmetic high
  nibble pattern), XORed with an LCG key stream on the low nibble, and placed left (low) and
  right (high) of the picture with one pure-black separator column each. It survives image
  hosts that strip metadata, but not lossy re-encoding or resizing.
- Reading tries the chunk first, then the pixels (as A1111 does); a corrupt chunk falls back to
  the pixels. The name is the one stored inside, not the file name (A1111 rule).

The payload for SD 1.x / 2.x is the A1111 `.pt` dict (`string_to_token`, `string_to_param`
`{"*": T}`, `name`, `step`, `sd_checkpoint`, `sd_checkpoint_name`).

**SDXL extension (ours).** A1111 reads an SDXL dict only when *every* value is a tensor, so the
SDXL payload is `{"clip_l": T[n,768], "clip_g": T[n,1280]}` and nothing else: A1111 loads such a
PNG (named after the file, since no name is inside). The name and step travel in a second
`tEXt` chunk, `sd-ti-embedding-info` (below). When reading we also accept the variant
`string_to_param: {"clip_l": T, "clip_g": T}` that other tools might choose.

**Info chunk (ours, all families).** `sd-ti-embedding-info` = base64 JSON
`{"name", "step", "metadata"}` with our metadata (settings, base model, ...). A1111 ignores it.
It is lost with the other chunks when metadata is stripped; the vectors are not. A kind other
than standard (per-layer) adds its `kind`, `kind_info` and `kind_parts` there (as in our
safetensors header), so our PNG carries the full embedding; the payload and the pixels hold its
standard part, which is what A1111 and a stripped PNG give.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.families import CLIP_G, CLIP_L
from embeddings.formats.a1111_pt import a1111_dict, sdxl_dict
from embeddings.formats.layouts import check_writable, classify, writable_metadata
from embeddings.kinds import KIND_FILE_KEYS, kind_fields, with_kind_fields
from workspace.atomic import atomic_write_with

CHUNK_KEY = "sd-ti-embedding"
INFO_KEY = "sd-ti-embedding-info"
IMAGE_EMBEDDING_SUFFIXES = (".png", ".webp", ".avif", ".jxl")
DEFAULT_PICTURE = (256, 256)
_TEXT_FILL = (255, 255, 255, 230)


# ---------------------------------------------------------------- JSON with tensors (A1111 encoder)
class _TensorEncoder(json.JSONEncoder):
    def default(self, o: Any) -> Any:
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.detach().cpu().numpy().tolist()}
        return super().default(o)


def _tensor_hook(d: dict) -> Any:
    if "TORCHTENSOR" in d:
        return torch.from_numpy(np.array(d["TORCHTENSOR"], dtype=np.float64))
    return d


def payload_json(payload: dict) -> str:
    return json.dumps(payload, cls=_TensorEncoder)


def parse_payload_json(text: str | bytes) -> Any:
    return json.loads(text, object_hook=_tensor_hook)


def payload_b64(payload: dict) -> bytes:
    return base64.b64encode(payload_json(payload).encode())


# ---------------------------------------------------------------- pixel data embed
def lcg_keys(count: int) -> np.ndarray:
    """The XOR key stream: s <- (1664525 s + 1013904223) mod 2^32 from s=0; key = (s mod 255) & 0x0F."""
    out = np.empty(count, dtype=np.uint8)
    s = 0
    for i in range(count):
        s = (1664525 * s + 1013904223) % 4294967296
        out[i] = (s % 255) & 0x0F
    return out


_KEY_CACHE: dict[int, np.ndarray] = {}


def _keys(count: int) -> np.ndarray:
    """Key streams are a prefix of one sequence, so compute the longest once and slice."""
    longest = max(_KEY_CACHE, default=0)
    if count > longest:
        _KEY_CACHE.clear()
        _KEY_CACHE[max(count, 2 * longest)] = lcg_keys(max(count, 2 * longest))
        longest = max(_KEY_CACHE)
    return _KEY_CACHE[longest][:count]


def _xor_block(block: np.ndarray) -> np.ndarray:
    return block ^ _keys(block.size).reshape(block.shape)


def _decorate(block: np.ndarray, shades: np.ndarray) -> np.ndarray:
    """XOR a dotted grey pattern into the high nibble (cosmetic: the decoder drops high nibbles)."""
    h, w = block.shape[0], block.shape[1]
    canvas = Image.new("RGB", (w, h))
    draw = ImageDraw.Draw(canvas)
    i = 0
    for x in range(-6, w, 8):
        for yi, y in enumerate(range(-6, h, 8)):
            o = 4 if yi % 2 == 0 else 0
            shade = int(shades[i % len(shades)])
            i += 1
            draw.ellipse((x + o, y, x + 6 + o, y + 6), fill=(shade, shade, shade))
    return block ^ (np.asarray(canvas, dtype=np.uint8) & 0xF0)


def _edge_shades(first_vector: torch.Tensor) -> np.ndarray:
    v = np.abs(np.nan_to_num(first_vector.detach().cpu().numpy().astype(np.float64)[:1024], posinf=0, neginf=0))
    top = float(v.max()) if v.size else 0.0
    if top <= 0:
        return np.zeros(max(1, v.size), dtype=np.uint8)
    return (v / top * 255).astype(np.uint8)


def insert_data_embed(picture, payload: dict, first_vector: torch.Tensor):
    """The picture with the payload's low-nibble block on its left and high-nibble block on its right."""
    data = np.frombuffer(zlib.compress(payload_json(payload).encode(), level=9), np.uint8)
    h = picture.size[1]
    n = data.size + (h - data.size % h)
    n = n + (3 * h - n % (3 * h))
    low = np.resize(data & 0x0F, n).reshape(h, -1, 3).astype(np.uint8)
    high = np.resize(data >> 4, n).reshape(h, -1, 3).astype(np.uint8)
    shades = _edge_shades(first_vector)
    low = _xor_block(_decorate(low, shades))
    high = _xor_block(_decorate(high, shades[::-1]))
    bw = low.shape[1]
    canvas = Image.new("RGB", (bw + 1 + picture.size[0] + 1 + bw, h), (0, 0, 0))
    canvas.paste(Image.fromarray(low, mode="RGB"), (0, 0))
    canvas.paste(picture.convert("RGB"), (bw + 1, 0))
    canvas.paste(Image.fromarray(high, mode="RGB"), (bw + 1 + picture.size[0] + 1, 0))
    return canvas


def _crop_black(arr: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop to the box of pixels whose channels are all non-zero; also return the (row, col) offset."""
    mask = (arr > 0).all(axis=2)
    cols, rows = mask.any(axis=0), mask.any(axis=1)
    if not cols.any():
        return arr[:0, :0], (0, 0)
    c0, c1 = int(cols.argmax()), mask.shape[1] - int(cols[::-1].argmax())
    r0, r1 = int(rows.argmax()), mask.shape[0] - int(rows[::-1].argmax())
    return arr[r0:r1, c0:c1], (r0, c0)


def find_data_blocks(image) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]] | None:
    """(low block, high block, box of the picture between the separators in image coordinates
    as (left, top, right, bottom)), or None when the image has no data blocks."""
    cropped, (r0, c0) = _crop_black(np.asarray(image.convert("RGB"), dtype=np.uint8))
    arr = cropped & 0x0F
    if arr.size == 0:
        return None
    black = np.where(arr.sum(axis=(0, 2), dtype=np.int64) == 0)[0]
    if black.size < 2:
        return None
    lo, hi = int(black.min()), int(black.max())
    box = (c0 + lo + 1, r0, c0 + hi, r0 + arr.shape[0])
    return arr[:, :lo, :], arr[:, hi + 1 :, :], box


def extract_data_embed(image) -> Any:
    """The decoded payload hidden in the pixels; None when the image has no data blocks.

    Raises ValueError when blocks are found but do not decode (e.g. black bars in a photo).
    """
    found = find_data_blocks(image)
    if found is None:
        return None
    low, high, _ = found
    if low.shape != high.shape or low.size == 0:
        raise ValueError(f"the two data blocks differ in size ({low.shape[1]} and {high.shape[1]} columns)")
    data = (_xor_block(high) << 4) | _xor_block(low)
    try:
        raw = zlib.decompress(data.astype(np.uint8).tobytes())
    except zlib.error as e:
        raise ValueError(f"pixel data does not decompress ({e})") from None
    return parse_payload_json(raw)


# ---------------------------------------------------------------- caption overlay and default picture
def _font(size: int):
    size = max(1, int(size))
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def _text_width(draw, text: str, font) -> float:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return max(1.0, float(right - left))


def caption_overlay(picture, title: str, left: str, mid: str, right: str):
    """Darken top and bottom and write the title and three footers, like A1111's training PNGs."""
    image = picture.convert("RGBA")
    w, h = image.size
    column = Image.new("RGBA", (1, h))
    for y in range(h):
        mag = max(1 - math.cos(y / h * 1.5), 1 - math.cos((h - y) / h * 1.65))
        column.putpixel((0, y), (0, 0, 0, min(255, int(mag * 255))))
    image = Image.alpha_composite(image, column.resize((w, h)))
    draw = ImageDraw.Draw(image)
    pad = 10
    base = 32
    size = min(int(base * ((w * 0.75 - pad * 4) / _text_width(draw, title, _font(base)))), 72)
    draw.text((pad, pad), title, anchor="lt", font=_font(size), fill=_TEXT_FILL)
    sizes = [min(int(size * ((w / 3 - pad) / _text_width(draw, t, _font(size)))), 72) for t in (left, mid, right) if t]
    font = _font(min(sizes) if sizes else size)
    draw.text((pad, h - pad), left, anchor="ls", font=font, fill=_TEXT_FILL)
    draw.text((w / 2, h - pad), mid, anchor="ms", font=font, fill=_TEXT_FILL)
    draw.text((w - pad, h - pad), right, anchor="rs", font=font, fill=_TEXT_FILL)
    return image.convert("RGB")


def default_picture(emb: Embedding, size: tuple[int, int] = DEFAULT_PICTURE):
    """A plain picture derived from the vectors (one colour band per vector) when no preview is given."""
    w, h = size
    first = next(iter(emb.vectors.values()))
    n = first.shape[0]
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    band = max(1, h // n)
    for i in range(n):
        v = np.nan_to_num(first[i].numpy().astype(np.float64))
        third = max(1, v.size // 3)
        rgb = [float(np.mean(v[k * third : (k + 1) * third])) if v[k * third :].size else 0.0 for k in range(3)]
        scale = max(1e-8, float(np.max(np.abs(v))) if v.size else 1.0)
        colour = [int(96 + 96 * max(-1.0, min(1.0, c / scale * 4))) for c in rgb]
        x = np.linspace(0.55, 1.0, w)[None, :, None]
        arr[i * band : (i + 1) * band if i < n - 1 else h] = (np.array(colour)[None, None, :] * x).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


# ---------------------------------------------------------------- save and load
def image_payload(emb: Embedding) -> dict:
    check_writable(emb)
    if set(emb.vectors) == {CLIP_L, CLIP_G}:
        return sdxl_dict(emb)
    return a1111_dict(emb)


def info_b64(emb: Embedding) -> bytes:
    info = {"name": emb.name, "step": int(emb.step), "metadata": writable_metadata(emb), **kind_fields(emb)}
    return base64.b64encode(json.dumps(info, ensure_ascii=True, default=str).encode())


def build_png(emb: Embedding, preview=None, *, caption: bool = True):
    """(image, PngInfo) for `emb`: captioned picture with data blocks, plus both text chunks."""
    if preview is None:
        picture = default_picture(emb)
    elif isinstance(preview, str | Path):
        with Image.open(preview) as im:
            picture = im.convert("RGB")
    else:
        picture = preview.convert("RGB")
    if caption:
        model = str(emb.metadata.get("base_model") or "")
        short = emb.metadata.get("base_model_hash")
        picture = caption_overlay(picture, emb.name, model, f"[{short}]" if short else "",
                                  f"{emb.num_vectors}v {emb.step}s")
    payload = image_payload(emb)
    first = next(iter(emb.vectors.values()))[0]
    image = insert_data_embed(picture, payload, first)
    # The decoder crops black margins and looks for black columns; check ours reads back.
    back = extract_data_embed(image)
    if back is None or not _same_vectors(back, payload):
        raise EmbeddingError(f"embedding {emb.name!r}: the pixel data did not read back; try another preview image")
    info = PngInfo()
    info.add_text(CHUNK_KEY, payload_b64(payload))
    info.add_text(INFO_KEY, info_b64(emb))
    return image, info


def _same_vectors(a: Any, b: dict) -> bool:
    def tensors(d: Any) -> list[torch.Tensor]:
        d = d.get("string_to_param", d) if isinstance(d, dict) else {}
        return [v for v in d.values() if isinstance(v, torch.Tensor)]

    ta, tb = tensors(a), tensors(b)
    def same(x: torch.Tensor, y: torch.Tensor) -> bool:
        x, y = x.float(), y.float()
        return x.shape == y.shape and bool(((x == y) | (torch.isnan(x) & torch.isnan(y))).all())

    return len(ta) == len(tb) and all(same(x, y) for x, y in zip(ta, tb, strict=True))


def save_png(emb: Embedding, path: Path, preview=None, *, caption: bool = True) -> Path:
    image, info = build_png(emb, preview, caption=caption)
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))


def _decode_b64_json(value: Any) -> Any:
    """The chunk's payload; ValueError saying which layer is broken (base64, or the JSON inside)."""
    raw = value.encode("latin-1") if isinstance(value, str) else value
    try:
        payload = base64.b64decode(raw, validate=False)
    except (ValueError, TypeError) as e:
        raise ValueError(f"not base64: {e}") from None
    if payload[:1] == b"\x80":
        raise ValueError("base64 of a pickle, not of JSON (never unpickled)")
    try:
        return parse_payload_json(payload)
    except (ValueError, TypeError, UnicodeError) as e:
        raise ValueError(f"not JSON: {e}") from None


def load_image_embedding(path: Path) -> Embedding:
    try:
        with Image.open(path) as im:
            im.load()
            text = dict(getattr(im, "text", None) or {})
            image = im.copy()
            kind = (im.format or path.suffix.lstrip(".")).lower()
    except UnidentifiedImageError:
        raise EmbeddingFileError(path, "not an image this program can open") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise EmbeddingFileError(path, f"broken image ({str(e)[:200]})") from None
    data = None
    source = "chunk"
    chunk_error = None
    if CHUNK_KEY in text:
        try:
            data = _decode_b64_json(text[CHUNK_KEY])
        except (ValueError, TypeError, UnicodeError) as e:
            chunk_error = f"the {CHUNK_KEY} text chunk is corrupt ({str(e)[:120]})"
    if data is None:
        source = "pixels"
        try:
            data = extract_data_embed(image)
        except (ValueError, TypeError, UnicodeError) as e:
            raise EmbeddingFileError(path, chunk_error or f"image has data blocks that do not decode: {e}") from None
        if data is None:
            raise EmbeddingFileError(
                path, chunk_error or f"no embedding in this image: no {CHUNK_KEY} text chunk and no pixel data blocks"
            )
    info: dict[str, Any] = {}
    if INFO_KEY in text:
        try:
            decoded = json.loads(base64.b64decode(text[INFO_KEY]))
            info = decoded if isinstance(decoded, dict) else {}
        except (ValueError, TypeError, UnicodeError):
            info = {}
    stored = data.get("name") if isinstance(data, dict) else None
    name = stored if isinstance(stored, str) and stored else info.get("name") or path.stem
    emb = classify(path, data, container="image", name=str(name))
    try:
        emb = with_kind_fields(emb, {k: info[k] for k in KIND_FILE_KEYS if k in info})
    except EmbeddingError as e:
        raise EmbeddingFileError(path, str(e)) from None
    meta = dict(info.get("metadata") or {}) if isinstance(info.get("metadata"), dict) else {}
    for k in ("format", "sha256", "source_dtype", "token", "stored_name"):
        meta.pop(k, None)
    emb.metadata = {**meta, **emb.metadata}
    emb.metadata.pop("stored_name", None)  # for images the stored name *is* the name
    emb.metadata.pop("source_dtype", None)  # JSON numbers always decode as float64
    if not (isinstance(data, dict) and "step" in data) and "step" in info:
        try:
            emb.step = int(info["step"])
        except (TypeError, ValueError):
            pass
    emb.metadata["format"] = f"{kind}-{source}"
    return emb
