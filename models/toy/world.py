"""The toy world: one flat-coloured shape on a flat background, 64 px, with a caption.

Everything is a pure function of a seed, so the build script, the tests and the benchmarks all
see the same images without shipping any. Colours are few and far apart in RGB so the attribute
reader can name them from pixel statistics; shapes differ in outline so a small classifier can
tell them apart from the object's mask.

Some shape-colour combinations are never shown to the model during its training
(`HELD_OUT`): prompt following is measured on them, and the learning test plants one of them
as a concept the model was never captioned with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4  # drawn at 256 px and box-filtered down: smooth edges, like a real photo's

SHAPES = ("circle", "square", "triangle", "star", "ring")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40),
    "orange": (240, 140, 20),
    "yellow": (235, 220, 50),
    "green": (40, 170, 60),
    "blue": (40, 80, 215),
    "purple": (140, 50, 190),
    "white": (240, 240, 240),
}
COLOUR_NAMES = tuple(COLOURS)

# One held-out colour per shape, each colour at most once: every shape and colour still
# appears in training with other partners, so the words are known but these pairings never are.
HELD_OUT: frozenset[tuple[str, str]] = frozenset(
    {("circle", "blue"), ("square", "orange"), ("triangle", "white"), ("star", "purple"), ("ring", "yellow")}
)
# The concept planted by the learning test and the benchmark: a held-out pair.
PLANTED = ("circle", "blue")
assert PLANTED in HELD_OUT


@dataclass(frozen=True)
class Scene:
    """What one image shows. `cx`, `cy`, `radius` in pixels of the 64 px image."""

    shape: str
    colour: str
    background: str
    cx: float
    cy: float
    radius: float

    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def sample_scene(rng: random.Random, *, held_out: bool | None = False, shape: str | None = None,
                 colour: str | None = None, background: str | None = None) -> Scene:
    """A random scene. `held_out`: False = training pairs only, True = held-out pairs only,
    None = any pair. Fixed attributes are honoured as given."""
    while True:
        s = shape or rng.choice(SHAPES)
        c = colour or rng.choice(COLOUR_NAMES)
        pair_held = (s, c) in HELD_OUT
        if held_out is None or pair_held == held_out or (shape and colour):
            break
    b = background or rng.choice([n for n in COLOUR_NAMES if n != c])
    radius = rng.uniform(15.0, 23.0)
    cx = SIZE / 2 + rng.uniform(-6.0, 6.0)
    cy = SIZE / 2 + rng.uniform(-6.0, 6.0)
    return Scene(s, c, b, cx, cy, radius)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.82
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * 0.15 + r * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.45
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        return pts
    raise ValueError(f"{shape}: not a polygon shape")


def render(scene: Scene) -> Image.Image:
    """The scene as a 64 px RGB image."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (SIZE * k, SIZE * k), COLOURS[scene.background])
    draw = ImageDraw.Draw(img)
    cx, cy, r = scene.cx * k, scene.cy * k, scene.radius * k
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif scene.shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        inner = r * 0.55
        draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=COLOURS[scene.background])
    else:
        draw.polygon(_polygon(scene.shape, cx, cy, r), fill=fill)
    return img.resize((SIZE, SIZE), Image.Resampling.BOX)


def render_array(scene: Scene) -> np.ndarray:
    """The scene as float32 HWC in [0, 1]."""
    return np.asarray(render(scene), dtype=np.float32) / 255.0


def scenes(seed: int, n: int, *, held_out: bool | None = False, **fixed) -> list[Scene]:
    """`n` scenes from `seed` (same seed, same scenes, on every machine)."""
    rng = random.Random(seed)
    return [sample_scene(rng, held_out=held_out, **fixed) for _ in range(n)]


def caption_variant(scene: Scene, rng: random.Random) -> str:
    """A training caption: usually the full one, sometimes with an attribute left unsaid, so
    each word carries its own meaning and 'shape' means 'any shape'. Empty captions (for
    classifier-free guidance) are chosen by the trainer, not here."""
    u = rng.random()
    if u < 0.70:
        return scene.caption()
    if u < 0.80:
        return f"a {scene.colour} shape on a {scene.background} background"
    if u < 0.90:
        return f"a {scene.shape} on a {scene.background} background"
    return f"a {scene.colour} {scene.shape}"
