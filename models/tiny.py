"""The built-in `tiny` model: the real SD 1.x architecture at toy widths, random weights.

It is generated deterministically from a fixed seed on first use and cached as an ordinary
diffusers folder in the data folder, so every code path (folder loading, single-file
conversion, training, previews) treats it like a real model. Its images are noise: it exists
for trying the workflow and for tests.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

from models.tokenizer import write_clip_tokenizer

TINY_NAME = "tiny"
TINY_SEED = 20221002
TINY_VERSION = 1  # bump when the architecture below changes; old caches are rebuilt

TEXT_WIDTH = 32


def tiny_components(seed: int = TINY_SEED) -> dict:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
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
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=2,
        norm_num_groups=4,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=64,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae, "scheduler": scheduler}


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Build the tiny model folder under `cache_dir/models/tiny` if it is missing or stale."""
    folder = cache_dir / "models" / TINY_NAME
    marker = folder / "tiny_model.json"
    if marker.is_file():
        try:
            if json.loads(marker.read_text()).get("version") == TINY_VERSION:
                return folder
        except (OSError, ValueError):
            pass
    from diffusers import StableDiffusionPipeline

    from models.tokenizer import load_clip_tokenizer

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        write_clip_tokenizer(staging / "tokenizer")
        parts = tiny_components()
        pipe = StableDiffusionPipeline(
            tokenizer=load_clip_tokenizer(staging / "tokenizer"),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            **parts,
        )
        pipe.save_pretrained(staging, safe_serialization=True)
        # save_pretrained in transformers 5 writes tokenizer.json only; keep our BPE files too.
        write_clip_tokenizer(staging / "tokenizer")
        (staging / "tiny_model.json").write_text(
            json.dumps({"version": TINY_VERSION, "seed": TINY_SEED, "note": "random weights"})
        )
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
