"""Sizes and crop boxes: pure arithmetic first, Pillow only at the edges.

A `CropPlan` says how to resize the whole image and which boxes to cut from the resized
image. Planning is separate from pixels so the geometry can be tested exactly (golden sizes
and boxes) and so a re-run can know its outputs before decoding anything.

Crop modes:
- `center`: scale to cover the target, cut the middle (A1111's "crop and resize").
- `fit`: keep the whole picture and its aspect ratio at the target's area (for bucketed
  training); each side is trimmed to a multiple of `multiple_of` (the VAE needs multiples of 8).
- `focal`: like `center`, but the window slides to the most detailed region (edges + entropy).
- `keep`: no resize, no crop.
Split (A1111's rule) applies before the mode when the image is far from the target aspect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # left, top, right, bottom (Pillow's crop box)

CROP_MODES = ("center", "fit", "focal", "keep")


@dataclass(frozen=True)
class CropPlan:
    """Resize the image to `resize_to`, then cut each of `boxes` (coordinates after resizing)."""

    kind: str  # "center", "fit", "focal", "keep" or "split"
    resize_to: tuple[int, int]
    boxes: list[Box] = field(default_factory=list)
    small: bool = False  # the image was smaller than the target and was not upscaled

    @property
    def output_sizes(self) -> list[tuple[int, int]]:
        return [(r - le, b - t) for le, t, r, b in self.boxes]


def cover_scale(w: int, h: int, tw: int, th: int) -> float:
    """The scale at which (w, h) just covers (tw, th)."""
    return max(tw / w, th / h)


def effective_target(w: int, h: int, tw: int, th: int, upscale: bool, multiple_of: int = 8) -> tuple[int, int, bool]:
    """The target actually used: (tw, th), or a same-aspect smaller one for a small image.

    Without `upscale`, an image that would need enlarging keeps its own resolution: the target
    shrinks to the largest box of the target's aspect that fits inside the image (trimmed to
    `multiple_of` when it is big enough). Returns (tw, th, small).
    """
    s = cover_scale(w, h, tw, th)
    if s <= 1.0 or upscale:
        return tw, th, False
    nw, nh = max(1, math.floor(tw / s + 1e-9)), max(1, math.floor(th / s + 1e-9))
    nw, nh = _trim(nw, multiple_of), _trim(nh, multiple_of)
    return nw, nh, True


def _trim(n: int, multiple_of: int) -> int:
    return n - n % multiple_of if multiple_of > 1 and n >= multiple_of else n


def _scaled(w: int, h: int, s: float, tw: int, th: int) -> tuple[int, int]:
    """Scale (w, h) by s, never dropping below the target it must cover (rounding)."""
    return max(tw, round(w * s)), max(th, round(h * s))


def center_box(w: int, h: int, tw: int, th: int) -> Box:
    left, top = (w - tw) // 2, (h - th) // 2
    return (left, top, left + tw, top + th)


def plan_cover(w: int, h: int, tw: int, th: int, *, upscale: bool = False, kind: str = "center",
               multiple_of: int = 8) -> CropPlan:
    tw, th, small = effective_target(w, h, tw, th, upscale, multiple_of)
    s = cover_scale(w, h, tw, th)
    if small:
        s = min(s, 1.0)
    nw, nh = _scaled(w, h, s, tw, th)
    return CropPlan(kind, (nw, nh), [center_box(nw, nh, tw, th)], small)


def plan_fit(w: int, h: int, tw: int, th: int, *, upscale: bool = False, multiple_of: int = 8) -> CropPlan:
    """Keep the whole picture: scale to the target's *area* (as aspect-ratio buckets do), so a
    2:1 image at 512 becomes 724x362, not 512x256; then trim each side to `multiple_of`."""
    s = math.sqrt((tw * th) / (w * h))
    small = s > 1.0 and not upscale
    if small:
        s = 1.0
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    return CropPlan("fit", (nw, nh), [center_box(nw, nh, _trim(nw, multiple_of), _trim(nh, multiple_of))], small)


def split_ratio(w: int, h: int, tw: int, th: int) -> tuple[float, bool]:
    """(short/long ratio after normalising by the target aspect, is_tall)."""
    r = (h * tw) / (w * th)
    return (1.0 / r, True) if r > 1 else (r, False)


def plan_split(w: int, h: int, tw: int, th: int, *, threshold: float = 0.5, overlap: float = 0.2,
               upscale: bool = False, multiple_of: int = 8) -> CropPlan | None:
    """A1111's "split oversized images", or None when the image is not oversized enough.

    The short side is scaled to the target; `count = ceil((L - T*ov) / (T*(1-ov)))` windows of
    length T are spread evenly over the long side L (first at 0, last flush with the end).
    A1111 divides by zero when count == 1 (L rounds down to T): that gives one centred window.
    """
    threshold = max(0.0, min(1.0, threshold))
    overlap = max(0.0, min(0.9, overlap))
    ratio, tall = split_ratio(w, h, tw, th)
    if not (ratio < 1.0 and ratio <= threshold):
        return None
    tw, th, small = effective_target(w, h, tw, th, upscale, multiple_of)
    if tall:
        t_long = th
        long_len = max(t_long, h * tw // w)
        resize_to = (tw, long_len)
    else:
        t_long = tw
        long_len = max(t_long, w * th // h)
        resize_to = (long_len, th)
    count = math.ceil((long_len - t_long * overlap) / (t_long * (1.0 - overlap)))
    if count <= 1:
        offsets = [(long_len - t_long) // 2]
    else:
        step = (long_len - t_long) / (count - 1)
        offsets = [int(step * i) for i in range(count)]
    boxes = [(0, y, tw, y + th) for y in offsets] if tall else [(x, 0, x + tw, th) for x in offsets]
    return CropPlan("split", resize_to, boxes, small)


def plan_crops(w: int, h: int, tw: int, th: int, *, mode: str = "center", upscale: bool = False,
               split: bool = False, split_threshold: float = 0.5, split_overlap: float = 0.2,
               multiple_of: int = 8) -> CropPlan:
    """The plan for one image of size (w, h) and a target of (tw, th).

    For `focal` the returned box is the centred one; `focal_box` moves it once pixels exist.
    """
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode {mode!r} is not one of {', '.join(CROP_MODES)}")
    if split and mode != "keep":
        plan = plan_split(w, h, tw, th, threshold=split_threshold, overlap=split_overlap, upscale=upscale,
                          multiple_of=multiple_of)
        if plan is not None:
            return plan
    if mode == "keep":
        return CropPlan("keep", (w, h), [(0, 0, w, h)], False)
    if mode == "fit":
        return plan_fit(w, h, tw, th, upscale=upscale, multiple_of=multiple_of)
    return plan_cover(w, h, tw, th, upscale=upscale, kind=mode, multiple_of=multiple_of)


def apply_plan(img: Image.Image, plan: CropPlan) -> list[Image.Image]:
    """Resize once (Lanczos) and cut every box. Pixels are never resampled twice."""
    if img.size != plan.resize_to:
        img = img.resize(plan.resize_to, Image.Resampling.LANCZOS)
    return [img.crop(box) if box != (0, 0, *img.size) else img.copy() for box in plan.boxes]


# --- focal crop -------------------------------------------------------------------------------

_FOCAL_WORK_SIDE = 256  # saliency is computed on a copy this size: plenty for picking a window


def focal_box(img: Image.Image, tw: int, th: int, *, edges_weight: float = 0.5, entropy_weight: float = 0.15) -> Box:
    """Slide a (tw, th) window over the free axis of `img` (already scaled to cover) and keep
    the window with the most detail: edge strength plus grey-level entropy, each normalised
    over the candidate windows. Ties (a flat image) go to the centre.
    """
    w, h = img.size
    if (w, h) == (tw, th):
        return (0, 0, w, h)
    k = min(1.0, _FOCAL_WORK_SIDE / max(w, h))
    small = img.convert("L").resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.BILINEAR)
    g = np.asarray(small, dtype=np.float32)
    edges = np.zeros_like(g)
    edges[:, 1:] += np.abs(np.diff(g, axis=1))
    edges[1:, :] += np.abs(np.diff(g, axis=0))
    horizontal = w - tw >= h - th
    free = (w - tw) if horizontal else (h - th)
    win = max(1, round((tw if horizontal else th) * k))
    n_small = g.shape[1] if horizontal else g.shape[0]
    max_off = max(0, n_small - win)
    mid = max_off // 2
    candidates = sorted({mid, *np.linspace(0, max_off, num=min(max_off + 1, 65)).round().astype(int).tolist()})
    profile = edges.sum(axis=0 if horizontal else 1)
    cum = np.concatenate([[0.0], np.cumsum(profile)])
    edge_scores = np.array([cum[c + win] - cum[c] for c in candidates])
    ent_scores = np.array([_entropy(g[:, c:c + win] if horizontal else g[c:c + win, :]) for c in candidates])
    score = edges_weight * _norm(edge_scores) + entropy_weight * _norm(ent_scores)
    # prefer the centre among (near) ties so a featureless image crops exactly like `center`
    order = sorted(range(len(candidates)), key=lambda i: (-round(float(score[i]), 6), abs(candidates[i] - mid)))
    best = candidates[order[0]]
    offset = free // 2 if best == mid else min(free, max(0, round(best / k)))
    if horizontal:
        return (offset, (h - th) // 2, offset + tw, (h - th) // 2 + th)
    return ((w - tw) // 2, offset, (w - tw) // 2 + tw, offset + th)


def _entropy(block: np.ndarray) -> float:
    hist = np.bincount(block.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def _norm(values: np.ndarray) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values, dtype=np.float64)


def mirror(img: Image.Image) -> Image.Image:
    """The horizontal flip saved as a flipped copy."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
