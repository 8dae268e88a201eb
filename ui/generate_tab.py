"""Generate tab: try embeddings on the loaded base model with a plain text-to-image pipeline.

Every embedding in the library that fits the model can be used by name in the prompt (A1111
rules: case-insensitive, longest name first). The page says which ones the prompt used, so a
typo'd name is not mistaken for a weak embedding.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import gradio as gr

from embeddings.embedding import EmbeddingError
from embeddings.prompt import PromptEncoder, generate, generate_style_mix, parse_splits
from training.device import place_for_generation
from ui.common import Refresh, fail, user_errors
from ui.create_tab import model_dropdown, refresh_models
from ui.state import AppContext

MAX_IMAGES = 4
# Said next to every image of the built-in model: people otherwise take its noise for a broken
# embedding or a broken install.
NOISE_NOTE = ("the built-in tiny model has random weights, so its images are noise by design. It is for trying "
              "the workflow; pick a real Stable Diffusion model to see what an embedding does.")


@dataclass
class GenerateResult:
    images: list[tuple[Any, str]]  # (PIL image, caption with its parameters)
    info: str


def generate_images(ctx: AppContext, model_spec: str, prompt: str, negative: str, seed: float, steps: float,
                    cfg: float, width: float, height: float, count: float) -> GenerateResult:
    if not (prompt or "").strip():
        raise fail("Type a prompt first (use an embedding's name in it)")
    model = ctx.model(model_spec)
    place_for_generation(model)
    embs, skipped = ctx.usable_embeddings(model)
    used = sorted(PromptEncoder.for_embeddings(model, embs).tokenize([prompt, negative or ""]).used) if embs else []
    w, h = _size(model, width), _size(model, height)
    base_seed = int(seed) if int(seed) >= 0 else random.randrange(2**31)
    images = []
    for k in range(max(1, min(int(count), MAX_IMAGES))):
        s = base_seed + k
        img = generate(model, prompt, embs, negative_prompt=negative or "", seed=s, steps=int(steps), cfg=float(cfg),
                       width=w, height=h)
        images.append((img, f"seed {s} · {int(steps)} steps · CFG {cfg:g} · {w}×{h}"))
    info = [f"**Model:** {model.label}", f"**Prompt:** {prompt}"]
    if negative:
        info.append(f"**Negative:** {negative}")
    info.append("**Embeddings used:** " + (", ".join(used) if used else "none (no library name found in the prompt)"))
    if getattr(model, "random_weights", False):
        info.append(f"**Note:** {NOISE_NOTE}")
    if skipped:
        info.append("**Not usable with this model:** " + "; ".join(f"{n} ({why})" for n, why in skipped[:10]))
    return GenerateResult(images, "\n\n".join(info))


def style_mix_images(ctx: AppContext, model_spec: str, prompt: str, negative: str, seed: float, steps: float,
                     cfg: float, width: float, height: float, inner: str, outer: str, splits: str) -> GenerateResult:
    """A row of images across split points: `inner` (named in the prompt) on the coarse layers,
    `outer` on the outer N cross-attention layers at each end (embeddings.prompt.generate_style_mix)."""
    model = ctx.model(model_spec)
    place_for_generation(model)
    embs, _skipped = ctx.usable_embeddings(model)
    by_name = {e.name.casefold(): e for e in embs}
    picked = []
    for label, name in (("inner", inner), ("outer", outer)):
        emb = by_name.get((name or "").strip().casefold())
        if emb is None:
            raise fail(f"Style mixing: pick a usable embedding for the {label} layers (got {name!r})")
        picked.append(emb)
    a, b = picked
    if a.name not in PromptEncoder.for_embeddings(model, embs).tokenize([prompt or ""]).used:
        raise fail(f"Style mixing: put {a.name} in the prompt; the mix is spliced where it stands")
    try:
        points = parse_splits(splits)
    except EmbeddingError as e:
        raise fail(str(e)) from None
    s = int(seed) if int(seed) >= 0 else random.randrange(2**31)
    row = generate_style_mix(model, prompt, a, b, embs, points, negative_prompt=negative or "", seed=s,
                             steps=int(steps), cfg=float(cfg), width=_size(model, width), height=_size(model, height))
    images = [(img, f"{b.name} on the outer {k} layer(s) at each end" if k else f"{a.name} only") for k, img in row]
    info = (f"**Style mixing** on {model.label}: **{a.name}** on the coarse (inner) cross-attention layers, "
            f"**{b.name}** on the outer N at each end; N = {', '.join(str(k) for k, _ in row)} (seed {s}).")
    return GenerateResult(images, info)


def _size(model: Any, value: float) -> int | None:
    v = int(value or 0)
    if v <= 0:
        return None  # the model's native size
    step = 8 * model.vae_scale_factor  # the UNet halves the latent 3 times: multiples of 64 on SD
    return max(step, v - v % step)


def build(ctx: AppContext) -> Refresh:
    gr.Markdown("Try embeddings: type their names in the prompt. Images use the selected base model. "
                "The built-in **tiny** model has random weights: its images are noise, whatever the prompt.")
    with gr.Row():
        with gr.Column(scale=2):
            model = model_dropdown(ctx, "Base model", "gen_model")
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="gen_prompt", placeholder="a photo of my-cat")
            negative = gr.Textbox(label="Negative prompt", lines=1, elem_id="gen_negative")
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed (-1 = random)", elem_id="gen_seed")
                steps = gr.Slider(1, 150, value=20, step=1, label="Steps", elem_id="gen_steps")
                cfg = gr.Slider(1, 30, value=7, step=0.5, label="CFG scale", elem_id="gen_cfg")
            with gr.Row():
                width = gr.Number(value=0, precision=0, label="Width (0 = model default)", elem_id="gen_width")
                height = gr.Number(value=0, precision=0, label="Height (0 = model default)", elem_id="gen_height")
                count = gr.Slider(1, MAX_IMAGES, value=1, step=1, label="Images", elem_id="gen_count")
            btn = gr.Button("Generate", variant="primary", elem_id="gen_btn")
            with gr.Accordion("Style mixing (per-layer embeddings)", open=False):
                gr.Markdown("One embedding on the coarse layers (shape, layout: e.g. an object) and another on the "
                            "fine outer layers (colour, texture: e.g. a style), as a row of images from the first "
                            "alone to the second taking over. Put the first one's name in the prompt.")
                with gr.Row():
                    mix_inner = gr.Textbox(label="Inner layers (object)", elem_id="gen_mix_inner")
                    mix_outer = gr.Textbox(label="Outer layers (style)", elem_id="gen_mix_outer")
                    mix_splits = gr.Textbox(label="Split points", placeholder="empty = 5 points",
                                            info="outer layers at each end taken by the style, e.g. 0,2,4,6,8",
                                            elem_id="gen_mix_splits")
                mix_btn = gr.Button("Generate style-mix row", elem_id="gen_mix_btn")
            names = gr.Markdown(elem_id="gen_names")
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=2, height="auto", elem_id="gen_gallery")
            info = gr.Markdown(elem_id="gen_info")

    @user_errors("Generate")
    def generate_fn(m, p, n, s, st, c, w, h, k):
        res = generate_images(ctx, m, p, n, s, st, c, w, h, k)
        return res.images, res.info

    btn.click(generate_fn, [model, prompt, negative, seed, steps, cfg, width, height, count], [gallery, info],
              api_name="generate", concurrency_id="model", concurrency_limit=1)

    @user_errors("Style mixing")
    def mix_fn(m, p, n, s, st, c, w, h, a, b, sp):
        res = style_mix_images(ctx, m, p, n, s, st, c, w, h, a, b, sp)
        return res.images, res.info

    mix_btn.click(mix_fn, [model, prompt, negative, seed, steps, cfg, width, height, mix_inner, mix_outer, mix_splits],
                  [gallery, info], api_name="generate_style_mix", concurrency_id="model", concurrency_limit=1)

    def refresh(m):
        return refresh_models(ctx, m), library_names(ctx, m)

    model.change(lambda m: library_names(ctx, m), model, names, api_visibility="private", show_progress="hidden")
    return Refresh(refresh, [model], [model, names])


def model_widths(spec: str | None) -> dict[str, int] | None:
    """The text-encoder widths of a built-in model or of a family picked by name, without loading
    anything (embeddings.families); None for a model only loading can tell."""
    from embeddings.families import BUILTIN_MODELS, FAMILIES

    spec = (spec or "").strip() or "tiny"
    if spec in BUILTIN_MODELS:
        return dict(BUILTIN_MODELS[spec].widths)
    return FAMILIES[spec].widths if spec in FAMILIES else None


def library_names(ctx: AppContext, model_spec: str | None = None) -> str:
    """The names a prompt can use: readable, finite embeddings that fit the model (when its widths
    are known without loading it); broken or skipped files are listed in the Embeddings tab."""
    widths = model_widths(model_spec)
    names = sorted({e.name for e in ctx.library(None).entries()
                    if e.ok and e.embedding is not None and e.embedding.is_finite()
                    and (widths is None or e.embedding.widths == widths)}, key=str.casefold)
    if not names:
        return "No usable embeddings for this model yet: create one in the Create tab."
    return "**Usable in prompts:** " + ", ".join(f"`{n}`" for n in names[:50])
