"""Opening one image file safely and turning it into plain RGB (or RGBA when alpha is kept).

Everything a folder of downloaded images can throw at us ends here as an `ImageReadError`
whose message names the reason in words a user can act on: empty, truncated, not an image,
too many pixels, absurd shape. The caller adds the file name and goes on with the next file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageColor, ImageOps, UnidentifiedImageError

# The one list of image types the app reads; the training dataset scanner imports it too.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")

DEFAULT_MAX_PIXELS = 100_000_000  # 100 MP: far above any camera photo, far below a bomb
DEFAULT_MAX_ASPECT = 10.0

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(Exception):
    """A file that cannot become a training image. The message is the reason, without the path."""


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def parse_color(value: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """'#rrggbb', 'rrggbb', 'white', '255,255,255' or a tuple -> an RGB tuple (ValueError if not)."""
    if isinstance(value, tuple | list):
        rgb = tuple(int(v) for v in value)
    else:
        text = str(value).strip()
        if "," in text:
            rgb = tuple(int(v) for v in text.split(","))
        else:
            try:
                rgb = ImageColor.getrgb(text if not _is_bare_hex(text) else "#" + text)[:3]
            except ValueError as e:
                raise ValueError(f"background colour {value!r} is not a colour (use #rrggbb or a name)") from e
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"background colour {value!r} must be three values 0-255")
    return rgb  # type: ignore[return-value]


def _is_bare_hex(text: str) -> bool:
    return len(text) in (3, 6) and all(c in "0123456789abcdefABCDEF" for c in text)


@dataclass
class LoadedImage:
    """An opened, upright image ready for geometry: mode RGB, or RGBA when alpha was kept."""

    image: Image.Image
    original_size: tuple[int, int]  # after EXIF orientation
    original_mode: str
    had_alpha: bool


def open_image(
    path: str | Path,
    *,
    keep_alpha: bool = False,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_aspect: float = DEFAULT_MAX_ASPECT,
) -> LoadedImage:
    """Open, check, orient and convert one image. Raises `ImageReadError` with a plain reason.

    The size checks run on the header before any pixel is decoded, so a decompression bomb
    costs nothing. Only the first frame of animated files is used.
    """
    path = Path(path)
    if path.is_dir():
        raise ImageReadError("is a folder, not an image file")
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        reason = "broken link (its target does not exist)" if path.is_symlink() else "file not found"
        raise ImageReadError(reason) from e
    except OSError as e:
        raise ImageReadError(f"cannot read: {e.strerror or e}") from e
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                w, h = img.size
                _check_shape(w, h, max_pixels, max_aspect)
                img.seek(0)
                img.load()
                mode = img.mode
                upright = ImageOps.exif_transpose(img)
                upright.load()
        except ImageReadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageReadError(f"too many pixels, refused as a possible decompression bomb ({e})") from e
        except UnidentifiedImageError as e:
            raise ImageReadError("not an image, or a format Pillow cannot read") from e
        except PermissionError as e:
            raise ImageReadError(f"permission denied: {e.strerror or e}") from e
        except IsADirectoryError as e:
            raise ImageReadError("is a folder, not an image file") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            # Pillow reports truncated/damaged data as OSError("image file is truncated ...") and
            # a few decoders as SyntaxError/ValueError/EOFError.
            raise ImageReadError(f"damaged or truncated image data ({e})") from e

    had_alpha = _has_alpha(upright)
    rgb = to_rgb(upright, keep_alpha=keep_alpha, background=background)
    return LoadedImage(image=rgb, original_size=rgb.size, original_mode=mode, had_alpha=had_alpha)


def _check_shape(w: int, h: int, max_pixels: int, max_aspect: float) -> None:
    if w <= 0 or h <= 0:
        raise ImageReadError(f"has no pixels ({w}x{h})")
    if max_pixels and w * h > max_pixels:
        raise ImageReadError(
            f"{w}x{h} = {w * h / 1e6:.1f} MP is over the pixel limit of {max_pixels / 1e6:.1f} MP (max_pixels)"
        )
    aspect = max(w, h) / min(w, h)
    if max_aspect and aspect > max_aspect:
        raise ImageReadError(f"{w}x{h} has an aspect ratio of {aspect:.1f}:1, beyond the limit {max_aspect:g}:1 (max_aspect)")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (img.mode in ("P", "L", "RGB") and "transparency" in img.info)


def to_rgb(
    img: Image.Image, *, keep_alpha: bool = False, background: tuple[int, int, int] = (255, 255, 255)
) -> Image.Image:
    """Any Pillow mode -> RGB, or RGBA when `keep_alpha` and the image really has transparency.

    Why not just `convert("RGB")`: Pillow clips 16-bit values instead of scaling them (a 16-bit
    PNG turns almost white), and dropping alpha leaves whatever colour hides under transparent
    pixels (often black). A fully opaque alpha band is dropped even when alpha is kept, since
    it carries no weight information (and uniform weights break alpha-weighted losses).
    """
    if img.mode in _SIXTEEN_BIT_MODES or img.mode in ("I", "F"):
        img = _wide_to_l(img)
    elif img.mode == "1":
        img = img.convert("L")

    if _has_alpha(img):
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() == (255, 255):
            return rgba.convert("RGB")
        if keep_alpha:
            return rgba
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode == "RGB":
        return img
    return img.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV, P without transparency


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit L, scaling the range instead of clipping."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        top = 1.0 if arr.size and float(np.nanmax(arr)) <= 1.0 else 255.0
        out = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255)
    else:
        arr = arr.astype(np.int64)
        # I;16 is 16-bit by definition; mode I (32-bit) is how Pillow opens some 16-bit files.
        sixteen = img.mode in _SIXTEEN_BIT_MODES or (arr.size and int(arr.max()) > 255)
        out = np.clip(arr, 0, 65535) / 257.0 if sixteen else np.clip(arr, 0, 255)
    return Image.fromarray(np.round(out).astype(np.uint8))
