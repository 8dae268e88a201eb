"""The density (KDE) regulariser: low where real token embeddings are, pulls a stray vector back."""

import pytest
import torch

from training.config import ConfigError, TrainConfig
from training.density import DensityPrior


def test_density_prefers_real_token_rows_and_pulls_towards_them(tiny_model):
    prior = DensityPrior(tiny_model, weight=1.0)
    table = prior.tables["clip_l"]
    real = table[1000:1002].clone()
    far = real + 5 * table.std() * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    assert float(prior.loss({"clip_l": real})) < float(prior.loss({"clip_l": far}))
    v = far.clone().requires_grad_(True)
    prior.loss({"clip_l": v}).backward()
    stepped = (v - 0.5 * prior.bandwidth["clip_l"] ** 2 * 32 * v.grad).detach()
    assert float(prior.loss({"clip_l": stepped})) < float(prior.loss({"clip_l": far}))
    # per-layer tensors [groups, n, width] are regularised as they are
    grouped = far.unsqueeze(0).repeat(3, 1, 1)
    assert torch.allclose(prior.loss({"clip_l": grouped}), prior.loss({"clip_l": far}))
    assert float(DensityPrior(tiny_model, weight=0.5).loss({"clip_l": far})) == pytest.approx(
        0.5 * float(prior.loss({"clip_l": far})))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_density_weight_is_checked(bad):
    with pytest.raises(ConfigError, match="density_weight"):
        TrainConfig(density_weight=bad).validate()
