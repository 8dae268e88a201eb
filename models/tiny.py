"""The built-in `tiny`, `tiny-sdxl` and `tiny-sd2v` models: real SD 1.x / SDXL / SD 2.x (v-prediction)
layouts at toy widths, random weights.

It is generated deterministically from a fixed seed on first use and cached as an ordinary
diffusers folder in the data folder, so every code path (folder loading, single-file
conversion, training, previews) treats it like a real model. Its images are noise: it exists
for trying the workflow and for tests. diffusers and transformers are imported only to build one
(they take seconds to import).
"""

from __future__ import annotations

from pathlib import Path

import torch

from embeddings.families import BUILTIN_MODELS, CLIP_G, CLIP_H, CLIP_L, FAMILIES
from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer
from workspace.atomic import build_folder_once

TINY = BUILTIN_MODELS["tiny"]
TINY_SDXL = BUILTIN_MODELS["tiny-sdxl"]
TINY_SD2V = BUILTIN_MODELS["tiny-sd2v"]
TINY_SEED = 20221002
TINY_VERSION = 1  # bump when the architecture below changes; old caches are rebuilt
TINY_SDXL_VERSION = 1
TINY_SD2V_VERSION = 1

TEXT_WIDTH = TINY.widths[CLIP_L]
TEXT_WIDTH_2 = TINY_SDXL.widths[CLIP_G]
SDXL_PADS = FAMILIES[TINY_SDXL.family].pad_tokens
SD2_PAD = FAMILIES[TINY_SD2V.family].pad_tokens[0]


def tiny_vae(seed: int, scaling_factor: float = 0.18215):
    """The SD VAE layout (4 blocks, 8x downscale, 4 latent channels) at toy widths."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
        scaling_factor=scaling_factor,
    )


def sd_ddim_scheduler(**overrides):
    """DDIM with Stable Diffusion's own noise schedule (scaled-linear betas 0.00085..0.012, the
    settings SD checkpoints ship with); `overrides` e.g. prediction_type="v_prediction"."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, **overrides)


def tiny_components(seed: int = TINY_SEED) -> dict:
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        norm_num_groups=8,
        attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=TEXT_WIDTH,
    )
    vae = tiny_vae(seed + 2)
    scheduler = sd_ddim_scheduler()
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


def tiny_sdxl_components(seed: int = TINY_SEED) -> dict:
    """SDXL's layout at toy widths: two text encoders (32 and 64 wide, the second with a
    projection whose pooled output feeds the UNet's `text_time` embedding), a 3-level UNet
    whose first level has no attention, transformer depth that grows with level, linear
    projections. Cross-attention width is 32 + 64 = 96, as SDXL's is 768 + 1280."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text_config(width: int, hidden_act: str, pad_token_id: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=width * 2,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=width,
            hidden_act=hidden_act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=pad_token_id,
        )

    # pad_token_id: the CLIP vocabulary ids of the family's pad tokens, "<|endoftext|>" and "!".
    torch.manual_seed(seed + 10)
    text_encoder = CLIPTextModel(text_config(TINY_SDXL.widths[CLIP_L], "quick_gelu", 49407))
    torch.manual_seed(seed + 11)
    text_encoder_2 = CLIPTextModelWithProjection(text_config(TEXT_WIDTH_2, "gelu", 0))
    torch.manual_seed(seed + 12)
    time_dim = 8
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        norm_num_groups=8,
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 2),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=sum(TINY_SDXL.widths.values()),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=TEXT_WIDTH_2 + 6 * time_dim,
    )
    vae = tiny_vae(seed + 13, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return {
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
    }


def tiny_sd2v_components(seed: int = TINY_SEED) -> dict:
    """SD 2.x (768-v) layout at toy width: one OpenCLIP-H-style text encoder (gelu, "!" padding,
    its last layer is the one SD 2.x uses), a UNet with linear projections, per-level head counts
    and upcast attention, and a v-prediction scheduler."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    width = TINY_SD2V.widths[CLIP_H]
    torch.manual_seed(seed + 20)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=width * 2,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            projection_dim=width,
            hidden_act="gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=0,  # "!" in the CLIP vocabulary
        )
    )
    torch.manual_seed(seed + 21)
    unet = UNet2DConditionModel(
        sample_size=8,
        layers_per_block=2,
        block_out_channels=(32, 32, 64, 64),
        norm_num_groups=8,
        attention_head_dim=(2, 4, 8, 8),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=width,
        use_linear_projection=True,
        upcast_attention=True,
    )
    vae = tiny_vae(seed + 22)
    scheduler = sd_ddim_scheduler(prediction_type="v_prediction")
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny model folder under `cache_dir/models/tiny` if it is missing or stale."""
    return _ensure_builtin(cache_dir, TINY.name, TINY_VERSION, _save_tiny)


def ensure_tiny_sdxl_model(cache_dir: Path) -> Path:
    """Build the tiny SDXL folder under `cache_dir/models/tiny-sdxl` if it is missing or stale."""
    return _ensure_builtin(cache_dir, TINY_SDXL.name, TINY_SDXL_VERSION, _save_tiny_sdxl)


def ensure_tiny_sd2v_model(cache_dir: Path) -> Path:
    """Build the tiny SD 2.x v-prediction folder under `cache_dir/models/tiny-sd2v` if missing or stale."""
    return _ensure_builtin(cache_dir, TINY_SD2V.name, TINY_SD2V_VERSION, _save_tiny_sd2v)


def _save_tiny(staging: Path) -> None:
    from diffusers import StableDiffusionPipeline

    write_clip_tokenizer(staging / "tokenizer")
    pipe = StableDiffusionPipeline(
        tokenizer=load_clip_tokenizer(staging / "tokenizer"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **tiny_components(),
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    # save_pretrained in transformers 5 writes tokenizer.json only; keep our BPE files too.
    write_clip_tokenizer(staging / "tokenizer")


def _save_tiny_sd2v(staging: Path) -> None:
    from diffusers import StableDiffusionPipeline

    write_clip_tokenizer(staging / "tokenizer", pad_token=SD2_PAD)
    pipe = StableDiffusionPipeline(
        tokenizer=load_clip_tokenizer(staging / "tokenizer"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
        **tiny_sd2v_components(),
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    write_clip_tokenizer(staging / "tokenizer", pad_token=SD2_PAD)


def _save_tiny_sdxl(staging: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    write_clip_tokenizer(staging / "tokenizer")
    write_clip_tokenizer(staging / "tokenizer_2", pad_token=SDXL_PADS[1])
    pipe = StableDiffusionXLPipeline(
        tokenizer=load_clip_tokenizer(staging / "tokenizer"),
        tokenizer_2=load_clip_tokenizer(staging / "tokenizer_2"),
        **tiny_sdxl_components(),
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    write_clip_tokenizer(staging / "tokenizer")
    write_clip_tokenizer(staging / "tokenizer_2", pad_token=SDXL_PADS[1])


def _ensure_builtin(cache_dir: Path, name: str, version: int, save) -> Path:
    """Build a built-in model into the cache once per version (atomic: staging folder, then rename)."""
    return build_folder_once(cache_dir / "models" / name, "tiny_model.json",
                             {"version": version, "seed": TINY_SEED, "note": "random weights"}, save)
