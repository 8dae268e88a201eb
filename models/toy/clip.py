"""The toy world's own CLIP: open_clip's CLIP at a custom small size ("toy-clip").

The config is registered with open_clip from `toy-clip.json` next to this file, so
`open_clip.create_model("toy-clip")` and `open_clip.get_tokenizer("toy-clip")` work like for any
named architecture; weights come from the shipped `clip.safetensors`. Image-image and
text-image similarity mean something in the toy world (it was trained contrastively on it).
"""

from __future__ import annotations

from pathlib import Path

import torch

CLIP_NAME = "toy-clip"
CLIP_CONFIG = Path(__file__).resolve().with_name(f"{CLIP_NAME}.json")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def register() -> None:
    """Make "toy-clip" a known open_clip architecture (idempotent)."""
    import open_clip

    if CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(CLIP_CONFIG)


def create_clip():
    """A freshly initialised toy CLIP and its tokenizer."""
    import open_clip

    register()
    return open_clip.create_model(CLIP_NAME), open_clip.get_tokenizer(CLIP_NAME)


def load_clip(path: Path):
    """(model in eval mode, tokenizer) with the weights in `path`."""
    from safetensors.torch import load_file

    model, tokenizer = create_clip()
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model.eval(), tokenizer


def image_batch(images) -> torch.Tensor:
    """PIL images or float HWC [0, 1] arrays -> the CLIP's input batch [B, 3, 64, 64]."""
    import numpy as np

    arrs = [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    arrs = [a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32) for a in arrs]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float()
    return (x - 0.5) / 0.5
