"""Preview images during training, generated from the live vectors (never a stale cache).

Each preview is a PNG whose text chunk `parameters` holds the generation settings in A1111's
infotext layout, so dropping it into A1111's "PNG Info" (or reading it here) recovers them.
The VAE is brought to the accelerator only for the preview and sent back afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from embeddings.embedding import Embedding
from embeddings.kinds import kind_of
from training.templates import render
from workspace.atomic import atomic_path

SCHEDULER_CLASSES = {
    "ddim": ("DDIMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": ("LMSDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


@dataclass(frozen=True)
class PreviewSpec:
    prompt: str
    negative: str
    seed: int
    steps: int
    cfg: float
    width: int
    height: int
    scheduler: str  # a key of SCHEDULER_CLASSES or "default"
    clip_skip: int = 1  # the run's (TrainConfig.clip_skip): images show what training conditions on

    def infotext(self, model, embedding: Embedding) -> str:
        neg = f"\nNegative prompt: {self.negative}" if self.negative else ""
        skip = f", Clip skip: {self.clip_skip}" if self.clip_skip > 1 else ""  # A1111 writes it only above 1
        return (
            f"{self.prompt}{neg}\nSteps: {self.steps}, Sampler: {self.scheduler}, CFG scale: {self.cfg}, "
            f"Seed: {self.seed}, Size: {self.width}x{self.height}{skip}, Model hash: {model.short_hash}, "
            f"Model: {model.name}, TI: {embedding.name}, TI step: {embedding.step}"
        )


def make_scheduler(model, name: str):
    """The inference scheduler for previews, configured from the model's own scheduler."""
    if name in ("", "default"):
        return None
    import diffusers

    cls_name, extra = SCHEDULER_CLASSES[name]
    return getattr(diffusers, cls_name).from_config(model.scheduler.config, **extra)


def render_preview(model, embedding: Embedding, spec: PreviewSpec, path: Path, *, device: torch.device,
                   dtype: torch.dtype, should_stop: Callable[[], bool] | None = None) -> Path:
    """Generate one preview with `embedding` (the live vectors, copied) and save it atomically.
    `should_stop` (an interrupt) is asked after each denoising step: embeddings.prompt.GenerationStopped."""
    from PIL.PngImagePlugin import PngInfo

    image = preview_image(model, embedding, spec, device=device, dtype=dtype, should_stop=should_stop)
    info = PngInfo()
    info.add_text("parameters", spec.infotext(model, embedding))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    return path


def preview_image(model, embedding: Embedding, spec: PreviewSpec, *, device: torch.device, dtype: torch.dtype,
                  should_stop: Callable[[], bool] | None = None):
    """The PIL image `spec` gives with `embedding`: what previews, CLIP scores and grids generate,
    at the run's clip skip (an untrained direct embedding, such as a run's original, restarts there).
    The VAE is brought to `device` only for the image and sent back afterwards."""
    from embeddings.prompt import generate

    embedding = kind_of(embedding).at_clip_skip(embedding, model, spec.clip_skip)

    vae_device = next(model.vae.parameters()).device
    if next(model.vae.parameters()).dtype != dtype:
        model.vae.to(dtype=dtype)
    model.vae.to(device=device)
    try:
        return generate(
            model, spec.prompt, [embedding], negative_prompt=spec.negative, seed=spec.seed, steps=spec.steps,
            cfg=spec.cfg, width=spec.width, height=spec.height, scheduler=make_scheduler(model, spec.scheduler),
            clip_skip=spec.clip_skip, should_stop=should_stop,
        )
    finally:
        model.vae.to(vae_device)


def preview_specs(config, model, first_line: str, name: str, first_caption: str,
                  latent_hw: tuple[int, int]) -> list[PreviewSpec]:
    """Every preview of a run: each prompt (or the template's first line) × each seed. The size is
    the form's, else the size of the training latents (the model's native size for this data)."""
    if not config.preview_every:
        return []
    prompts = config.preview_prompts or [render(first_line, name, first_caption)]
    width = config.preview_width or latent_hw[1] * model.vae_scale_factor
    height = config.preview_height or latent_hw[0] * model.vae_scale_factor
    return [PreviewSpec(p, config.preview_negative, s, config.preview_steps, config.preview_cfg, width, height,
                        config.preview_scheduler, config.clip_skip) for p in prompts for s in config.preview_seeds]
