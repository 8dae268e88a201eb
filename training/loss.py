"""The denoising loss shared by the training loop, the evaluation loss and the benchmark.

One UNet call on noised latents, MSE against what the model predicts: the noise for epsilon
models, the velocity for v-prediction models (SD 2.x 768). An optional per-pixel weight (from
PNG alpha) scales the squared error before averaging; the weights are normalised per image by
the dataset so an opaque image weighs exactly 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def denoise_loss(
    model,
    noise_scheduler,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    cond,
    *,
    weight: torch.Tensor | None = None,
    time_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean loss over the batch. `cond` is embeddings.prompt.TextConditioning; `time_ids` the
    SDXL micro-conditioning [B, 6] (original size, crop top-left, target size)."""
    unet = model.unet
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    kwargs = {}
    if model.family == "sdxl":
        kwargs["added_cond_kwargs"] = {"text_embeds": cond.pooled.to(unet.dtype), "time_ids": time_ids.to(unet.dtype)}
    pred = unet(noisy.to(unet.dtype), timesteps, cond.hidden.to(unet.dtype), return_dict=False, **kwargs)[0]
    if model.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    err = F.mse_loss(pred.float(), target.float(), reduction="none")
    if weight is not None:
        err = err * weight.float()
    return err.mean()


def sdxl_time_ids(sizes: list[tuple[int, int]], latent_hw: tuple[int, int], vae_scale_factor: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """SDXL's micro-conditioning, [B, 6]: each image's original (height, width), the crop's top-left
    (0, 0: the dataset never crops after bucketing), and the target size the latents decode to."""
    h, w = latent_hw[0] * vae_scale_factor, latent_hw[1] * vae_scale_factor
    return torch.tensor([[oh, ow, 0, 0, h, w] for oh, ow in sizes], dtype=torch.float32, device=device)
