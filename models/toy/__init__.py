"""The built-in `toy` model: an SD 1.x layout at toy size, trained on a tiny world of shapes and colours.

Unlike `tiny` (random weights), `toy` has really learned its world, so an embedding trained on
it can be seen to learn: its images show the concept, and the attribute reader can tell. The
weights are shipped in `weights/` (fp16, hash-checked) and assembled once into an ordinary
diffusers folder in the cache, so every code path treats it like any downloaded model.
Rebuild them with `python -m models.toy.build`.
"""

from __future__ import annotations

from pathlib import Path

from models.toy.weights import WEIGHTS_DIR, verify
from workspace.atomic import build_folder_once

TOY_NAME = "toy"
TOY_LABEL = "built-in toy model: shapes and colours"
MARKER = "toy_model.json"


def ensure_toy_model(cache_dir: Path, weights: Path = WEIGHTS_DIR) -> Path:
    """The diffusers folder `cache_dir/models/toy`, (re)built from the shipped weights when they changed."""
    manifest = verify(weights)
    version = {name: f["sha256"] for name, f in manifest["files"].items()}
    return build_folder_once(cache_dir / "models" / TOY_NAME, MARKER, {"weights": version, "note": TOY_LABEL},
                             lambda staging: _save_pipeline(staging, weights, manifest))


def _save_pipeline(staging: Path, weights: Path, manifest: dict) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer
    from models.toy import components as C

    def loaded(module, name: str):
        module.load_state_dict({k: v.to(torch.float32) for k, v in load_file(str(weights / name)).items()})
        return module

    write_clip_tokenizer(staging / "tokenizer")
    _, scheduler = C.toy_schedulers()
    pipe = StableDiffusionPipeline(
        vae=loaded(C.toy_vae(manifest["vae_scaling_factor"]), "vae.safetensors"),
        text_encoder=loaded(C.toy_text_encoder(), "text_encoder.safetensors"),
        tokenizer=load_clip_tokenizer(staging / "tokenizer"),
        unet=loaded(C.toy_unet(), "unet.safetensors"),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(staging, safe_serialization=True)
    # save_pretrained in transformers 5 writes tokenizer.json only; keep our BPE files too.
    write_clip_tokenizer(staging / "tokenizer")


def load_reader(weights: Path = WEIGHTS_DIR):
    """The attribute reader with its shipped shape classifier."""
    from models.toy.reader import AttributeReader

    verify(weights)
    return AttributeReader.load(weights / "reader.safetensors")


def load_toy_clip(weights: Path = WEIGHTS_DIR):
    """(toy CLIP model, tokenizer), weights verified."""
    from models.toy.clip import load_clip

    verify(weights)
    return load_clip(weights / "clip.safetensors")
