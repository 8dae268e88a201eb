"""The attribute reader: what a toy-world image shows, read back from its pixels.

Tests and benchmarks use it as ground truth for generated images. Colours come from pixel
statistics (the border is background; pixels far from it are the object; each is named by the
nearest palette colour), the shape from the object's mask by a small CNN the build script
trains on masks of VAE-reconstructed world images, so it has seen the soft edges generated
images have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.toy.world import COLOUR_NAMES, COLOURS, SHAPES

MASK_SIZE = 32
OBJECT_DISTANCE = 45.0  # RGB distance (0..255) from the background that counts as object: about half
# the closest two palette colours (orange and yellow, 86 apart), so blended edge pixels split evenly
MIN_OBJECT_FRACTION = 0.01
_PALETTE = np.array([COLOURS[n] for n in COLOUR_NAMES], dtype=np.float32)


@dataclass(frozen=True)
class Reading:
    """What the reader sees. `shape`/`colour` are "none" when no object stands out."""

    shape: str
    colour: str
    background: str
    object_fraction: float

    def shows(self, shape: str | None = None, colour: str | None = None, background: str | None = None) -> bool:
        return ((shape is None or self.shape == shape) and (colour is None or self.colour == colour)
                and (background is None or self.background == background))


class ShapeNet(nn.Module):
    """Mask (1x32x32) -> shape logits. Small enough to train in seconds."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, len(SHAPES)),
        )

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        return self.net(masks)


def _nearest(rgb: np.ndarray) -> str:
    return COLOUR_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def to_array(image) -> np.ndarray:
    """A PIL image, uint8 array or float [0, 1] array -> float32 HWC on the 0..255 scale."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    return arr * 255.0 if arr.max() <= 1.0 else arr


def object_mask(image) -> tuple[np.ndarray, str, np.ndarray]:
    """(bool mask HxW, background colour name, the array) for one image."""
    arr = to_array(image)
    border = np.concatenate([arr[:3].reshape(-1, 3), arr[-3:].reshape(-1, 3),
                             arr[:, :3].reshape(-1, 3), arr[:, -3:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    mask = np.sqrt(((arr - bg_rgb) ** 2).sum(-1)) > OBJECT_DISTANCE
    return mask, _nearest(bg_rgb), arr


def mask_tensor(mask: np.ndarray) -> torch.Tensor:
    """The classifier's input: the mask box-filtered to 32x32, as [1, 32, 32] float."""
    m = torch.from_numpy(mask.astype(np.float32))[None, None]
    return nn.functional.adaptive_avg_pool2d(m, MASK_SIZE)[0]


class AttributeReader:
    """Reads shape, object colour and background colour from toy-world images."""

    def __init__(self, net: ShapeNet) -> None:
        self.net = net.eval()

    @classmethod
    def load(cls, path: Path) -> AttributeReader:
        from safetensors.torch import load_file

        net = ShapeNet()
        net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        return cls(net)

    def read(self, image) -> Reading:
        return self.read_many([image])[0]

    def read_many(self, images) -> list[Reading]:
        found: list[tuple[np.ndarray, str, str, float]] = []
        for image in images:
            mask, background, arr = object_mask(image)
            fraction = float(mask.mean())
            colour = "none"
            if fraction >= MIN_OBJECT_FRACTION:
                # the object's inside (mask eroded by one pixel): its edges blend into the background
                inner = mask.copy()
                inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
                pixels = arr[inner] if inner.sum() >= 4 else arr[mask]
                colour = _nearest(np.median(pixels, axis=0))
            found.append((mask, colour, background, fraction))
        with torch.no_grad():
            logits = self.net(torch.stack([mask_tensor(m) for m, *_ in found]))
        shapes = [SHAPES[int(i)] for i in logits.argmax(-1)]
        return [
            Reading(shape if fraction >= MIN_OBJECT_FRACTION else "none", colour, background, fraction)
            for shape, (_, colour, background, fraction) in zip(shapes, found, strict=True)
        ]
