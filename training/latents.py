"""The latent cache: every training image goes through the VAE once, before the first step.

Encoding images every step (as the diffusers example does) is pure waste for a fixed dataset.
Modes, as A1111 names them:

* ``once``: one sample of the VAE posterior per image, drawn at caching time and reused forever;
* ``deterministic``: the posterior mean (no sampling noise);
* ``random``: cache the posterior mean and std and draw ``mean + std * eps`` at every use, which
  is exactly what encoding every step would give, at caching cost.

Horizontally flipped images are cached as their own latents (flipping a latent is not the same
as encoding a flipped image). Alpha weights are resized to the latent grid here, once. The
latents live on the training device (they are small); the VAE goes back to the CPU afterwards
so it does not hold accelerator memory while training (previews bring it back).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CachedLatent:
    mean: torch.Tensor  # [C, h, w] (already scaled); for "once" the drawn sample
    std: torch.Tensor | None  # [C, h, w] scaled; only for "random"
    weight: torch.Tensor | None  # [1, h, w] loss weight from alpha, or None (all ones)


class LatentCache:
    """Latents for `records` (training.dataset.ImageRecord) keyed by (index, flipped)."""

    def __init__(self, entries: dict[tuple[int, bool], CachedLatent], sampling: str):
        self.entries = entries
        self.sampling = sampling

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        vae,
        records: Sequence,
        opts,
        *,
        sampling: str,
        flips: bool,
        device: torch.device,
        dtype: torch.dtype,
        seed: int,
        load_pixels: Callable,
        on_progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> "LatentCache":
        """Encode every record (and its flip when `flips`). The "once" samples come from a
        generator seeded with `seed`, so a resumed run rebuilds the very same cache."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        scale = float(getattr(vae.config, "scaling_factor", 0.18215) or 0.18215)
        shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
        if next(vae.parameters()).dtype != dtype:
            vae.to(dtype=dtype)
        vae.to(device=device)
        entries: dict[tuple[int, bool], CachedLatent] = {}
        variants = (False, True) if flips else (False,)
        total = len(records) * len(variants)
        done = 0
        for i, rec in enumerate(records):
            for flip in variants:
                if should_stop is not None and should_stop():
                    return cls(entries, sampling)
                pixels, alpha = load_pixels(rec, opts, flip)
                dist = vae.encode(pixels.unsqueeze(0).to(device=device, dtype=dtype)).latent_dist
                mean = ((dist.mean.float() - shift) * scale)[0]
                std = (dist.std.float() * scale)[0]
                if sampling == "once":
                    eps = torch.randn(mean.shape, generator=gen).to(mean.device)
                    mean, std = mean + std * eps, None
                elif sampling == "deterministic":
                    std = None
                weight = None
                if alpha is not None:
                    w = alpha.float().to(device)[None, None]
                    weight = F.interpolate(w, size=tuple(mean.shape[-2:]), mode="area")[0]
                entries[(i, flip)] = CachedLatent(mean.contiguous(), std, weight)
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        return cls(entries, sampling)

    def latent(self, index: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        e = self.entries[(index, flip)]
        if e.std is None:
            return e.mean
        eps = torch.randn(e.mean.shape, generator=generator).to(e.mean.device)
        return e.mean + e.std * eps

    def weight(self, index: int, flip: bool) -> torch.Tensor | None:
        return self.entries[(index, flip)].weight

    def __len__(self) -> int:
        return len(self.entries)
