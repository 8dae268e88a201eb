"""Opening images: EXIF orientation, mode conversions, alpha, and every kind of bad file."""

import re

import numpy as np
import pytest
from PIL import Image

from preprocessing.images import ImageReadError, open_image, parse_color
from tests.preprocess_fixtures import (
    BLUE,
    GREEN,
    RED,
    halves,
    noise,
    png_with_declared_size,
    truncated_png,
    with_orientation,
)


def _close(a, b, tol=12):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "orientation,size,red_at,blue_at",
    [
        (1, (40, 20), (5, 10), (35, 10)),  # as stored
        (3, (40, 20), (35, 10), (5, 10)),  # rotated 180: red ends on the right
        (6, (20, 40), (10, 5), (10, 35)),  # rotate 90 clockwise: left half goes to the top
        (8, (20, 40), (10, 35), (10, 5)),  # rotate 90 anticlockwise: left half goes to the bottom
    ],
)
@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, orientation, size, red_at, blue_at, suffix):
    path = with_orientation(halves((40, 20), RED, BLUE), tmp_path / f"o{orientation}{suffix}", orientation)
    img = open_image(path).image
    assert img.size == size
    assert _close(img.getpixel(red_at), RED) and _close(img.getpixel(blue_at), BLUE)


def test_mode_conversions_to_rgb(tmp_path):
    cmyk = tmp_path / "cmyk.tif"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(cmyk)  # no cyan, full magenta+yellow = red
    assert open_image(cmyk).image.getpixel((1, 1)) == RED

    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    pal.save(tmp_path / "p.png")
    out = open_image(tmp_path / "p.png").image
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (10, 200, 30)

    # 16-bit greyscale is scaled (x/257), not clipped: Pillow's own convert would give 255 for all
    sixteen = Image.fromarray(np.array([[0, 32896, 65535, 1000]], dtype=np.uint16))
    sixteen.save(tmp_path / "i16.png")
    out = open_image(tmp_path / "i16.png").image
    assert [out.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (4, 4, 4)]

    Image.new("L", (4, 4), 100).save(tmp_path / "l.png")
    assert open_image(tmp_path / "l.png").image.getpixel((0, 0)) == (100, 100, 100)

    Image.new("1", (4, 4), 1).save(tmp_path / "bw.bmp")
    assert open_image(tmp_path / "bw.bmp").image.getpixel((0, 0)) == (255, 255, 255)


def test_la_and_palette_transparency_are_composited_on_the_background(tmp_path):
    la = Image.new("LA", (4, 2), (100, 255))
    la.putpixel((0, 0), (100, 0))
    la.save(tmp_path / "la.png")
    out = open_image(tmp_path / "la.png", background=(0, 0, 255)).image
    assert out.mode == "RGB" and out.getpixel((0, 0)) == BLUE and out.getpixel((1, 0)) == (100, 100, 100)

    pal = Image.new("P", (4, 2), 0)
    pal.putpalette([9, 9, 9, 200, 10, 10] + [0, 0, 0] * 254)
    pal.putpixel((3, 1), 1)
    pal.save(tmp_path / "pt.png", transparency=0)
    out = open_image(tmp_path / "pt.png", background=GREEN).image
    assert out.getpixel((0, 0)) == GREEN and out.getpixel((3, 1)) == (200, 10, 10)


def test_alpha_kept_or_composited(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    img.paste(Image.new("RGBA", (4, 8), (0, 255, 0, 255)), (4, 0))
    img.save(tmp_path / "a.png")
    kept = open_image(tmp_path / "a.png", keep_alpha=True)
    assert kept.had_alpha and kept.image.mode == "RGBA"
    assert kept.image.getpixel((0, 0))[3] == 0 and kept.image.getpixel((6, 0)) == (0, 255, 0, 255)
    flat = open_image(tmp_path / "a.png", keep_alpha=False, background=RED).image
    assert flat.mode == "RGB" and flat.getpixel((0, 0)) == RED and flat.getpixel((6, 0)) == GREEN
    # an alpha band that is fully opaque carries nothing: RGB even when alpha is kept
    Image.new("RGBA", (4, 4), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert open_image(tmp_path / "opaque.png", keep_alpha=True).image.mode == "RGB"


def test_parse_color():
    assert parse_color("#ff8000") == (255, 128, 0)
    assert parse_color("ff8000") == (255, 128, 0)
    assert parse_color("white") == (255, 255, 255)
    assert parse_color("1, 2, 3") == (1, 2, 3)
    with pytest.raises(ValueError, match="not a colour"):
        parse_color("blurple")


def _bad_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture")
    truncated_png(tmp_path / "truncated.png")
    png_with_declared_size(tmp_path / "bomb.png", 30000, 30000)
    noise((200, 10)).save(tmp_path / "thin.png")
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "link.png").symlink_to(tmp_path / "gone.png")
    return {
        "empty.png": "empty file (0 bytes)",
        "text.jpg": "not an image",
        "truncated.png": "damaged or truncated",
        "bomb.png": "decompression bomb",
        "thin.png": "aspect ratio of 20.0:1",
        "folder.png": "is a folder",
        "link.png": "broken link",
    }


def test_bad_files_each_give_their_reason(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(ImageReadError, match=re.escape(reason)):
            open_image(tmp_path / name)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    noise((200, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageReadError, match=r"200x100 = 0.0 MP is over the pixel limit.*max_pixels"):
        open_image(tmp_path / "big.png", max_pixels=10_000)
    assert open_image(tmp_path / "big.png", max_pixels=20_000).image.size == (200, 100)


def test_first_frame_of_an_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert open_image(tmp_path / "anim.gif").image.getpixel((2, 2)) == RED
