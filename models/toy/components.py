"""The toy model's architecture: SD 1.x layouts at toy widths (configs only, no weights).

The VAE keeps SD's 8x downscale (4 blocks, 4 latent channels), so a 64 px image is an 8x8x4
latent and the UNet is cheap enough to train on two CPU cores; the toy world's flat shapes
survive that compression. The text encoder is a real `CLIPTextModel` over the real CLIP
vocabulary (49408 rows), so any prompt tokenizes and embeddings splice in as on SD 1.x; only
the toy world's words were trained.
"""

from __future__ import annotations

import torch

TEXT_WIDTH = 64
LATENT_SIZE = 8
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def toy_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=TEXT_WIDTH * 2,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=TEXT_WIDTH,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def toy_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3,
        up_block_types=("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_WIDTH,
    )


def toy_vae(scaling_factor: float = 1.0):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        # one group: GroupNorm with small groups subtracts each group's spatial mean, which on
        # flat-colour images is most of the colour; one group keeps colour as a channel pattern
        norm_num_groups=1,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def toy_schedulers():
    """(training noise schedule, inference scheduler): SD 1.x's betas, DDPM to train, DDIM to sample."""
    from diffusers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(**BETAS)
    infer = DDIMScheduler(**BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return train, infer


def seeded(seed: int, build):
    """Build a module with torch's RNG at `seed` (initial weights are part of the recipe)."""
    torch.manual_seed(seed)
    return build()
