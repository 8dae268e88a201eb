"""The density regulariser: keep learned vectors where the text encoder's real token embeddings live.

P+ / XTI (arXiv 2303.09522) pull their per-layer tokens towards the density of the token
embedding table, which keeps them editable (a vector far from every real word is one the text
encoder never learned to compose). The density is a kernel density estimate (Gaussian kernel,
bandwidth h) over the vocabulary table E of each encoder:

    penalty(v) = -(log mean_i exp(-|v - E_i|^2 / (2 h^2))) / width

(per dimension, so one weight means the same for every encoder width), averaged over every
learned vector (all layer groups of a per-layer embedding), summed over encoders and multiplied
by `TrainConfig.density_weight`. h is the median distance from a token row to its nearest other
row over a fixed sample of rows: the scale at which the table itself is "dense". The gradient
pulls v towards the kernel-weighted mean of the nearby rows.
"""

from __future__ import annotations

import math

import torch

SAMPLE_ROWS = 2048  # rows used to pick the bandwidth (fixed seed: the same h every run)


class DensityPrior:
    """Built once per run from the model's token tables; `loss(vectors)` is differentiable."""

    def __init__(self, model, weight: float, device: torch.device | str = "cpu"):
        self.weight = float(weight)
        self.tables: dict[str, torch.Tensor] = {}
        self.bandwidth: dict[str, float] = {}
        for key, te in zip(model.encoder_keys, model.text_encoders, strict=True):
            table = te.get_input_embeddings().weight.detach().to(device, torch.float32)
            self.tables[key] = table
            self.bandwidth[key] = bandwidth(table)

    def loss(self, vectors: dict[str, torch.Tensor]) -> torch.Tensor:
        total = None
        for key, v in vectors.items():
            table, h = self.tables[key], self.bandwidth[key]
            flat = v.reshape(-1, v.shape[-1]).float()
            d2 = torch.cdist(flat, table).square()
            log_density = torch.logsumexp(-d2 / (2 * h * h), dim=1) - math.log(table.shape[0])
            term = (-log_density / v.shape[-1]).mean()
            total = term if total is None else total + term
        return self.weight * total


def bandwidth(table: torch.Tensor) -> float:
    """Median nearest-neighbour distance over a fixed sample of rows (never 0)."""
    gen = torch.Generator().manual_seed(0)
    rows = table[torch.randperm(table.shape[0], generator=gen)[:SAMPLE_ROWS].to(table.device)]
    parts = []
    for chunk in rows.split(256):  # 256 x vocabulary distances at a time: tens of MiB, not hundreds
        d = torch.cdist(chunk, table)
        d[d == 0] = float("inf")  # the row itself (and exact duplicates)
        parts.append(d.min(dim=1).values)
    nearest = torch.cat(parts)
    nearest = nearest[torch.isfinite(nearest)]
    h = float(nearest.median()) if nearest.numel() else 1.0
    return h if h > 0 else 1.0
