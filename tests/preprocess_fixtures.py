"""Image makers and fixtures for the preprocessing tests (real files, written with Pillow)."""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def halves(size: tuple[int, int], left: tuple, right: tuple, mode: str = "RGB") -> Image.Image:
    """An image whose left half is one colour and right half another (orientation checks)."""
    w, h = size
    img = Image.new(mode, size, left)
    img.paste(Image.new(mode, (w - w // 2, h), right), (w // 2, 0))
    return img


def noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def with_orientation(img: Image.Image, path: Path, orientation: int) -> Path:
    """Save `img` (stored sideways) with an EXIF Orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def png_with_declared_size(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims width x height (a decompression bomb, without the memory)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def truncated_png(path: Path) -> Path:
    noise((64, 64), seed=3).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder (links by target text): for 'source untouched' checks."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = "link:" + str(p.readlink())
        elif p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(folder)) + "/"] = "dir"
    return out


@pytest.fixture(scope="session")
def tiny_blip_dir(tmp_path_factory) -> Path:
    from preprocessing.captioners import build_tiny_blip

    return build_tiny_blip(tmp_path_factory.mktemp("tiny-blip-cache") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_blip(tiny_blip_dir):
    """The tiny BLIP loaded once (CPU, greedy decoding so a caption is a function of the pixels)."""
    from preprocessing.captioners import load_blip

    cap = load_blip(tiny_blip_dir, "cpu", max_new_tokens=6, num_beams=1)
    yield cap
    cap.close()
