"""`python app.py generate`: text-to-image with the library's embeddings, headless.

    python app.py generate "a photo of mycat on a sofa" --model sd15.safetensors -o cat.png
    python app.py generate "mycat" --model tiny --steps 4 --seed 7 --size 64x64 --scheduler euler

The same path as the Generate tab and the previews (`embeddings.prompt.generate`): every library
embedding that fits the model can be used by name in the prompt, and the output PNG carries the
settings in A1111's infotext so "PNG Info" reads them back.
"""

from __future__ import annotations

from pathlib import Path

from cli import CliError
from cli.common import data_dir


def register(sub) -> None:
    from training.previews import SCHEDULER_CLASSES

    p = sub.add_parser("generate", help="generate an image with the library's embeddings (headless)")
    p.add_argument("prompt", help="the prompt; embedding names are spliced in as in the Generate tab")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--model", default="tiny", help="tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="guidance scale")
    p.add_argument("--size", default="", metavar="WxH", help="image size, e.g. 512x512 (default: the model's native)")
    p.add_argument("--scheduler", default="default", choices=["default", *SCHEDULER_CLASSES],
                   help="sampler (default: the model's own)")
    p.add_argument("--style-mix", nargs=2, metavar=("INNER", "OUTER"), default=None,
                   help="style mixing: INNER (named in the prompt, e.g. an object) on the coarse layers and OUTER "
                        "(e.g. a style) on the fine ones; writes a row of images across split points")
    p.add_argument("--splits", default="", metavar="S,S,...",
                   help="with --style-mix: layers at each end that take OUTER, one image each (default: 5 "
                        "points from 0 = INNER only to all OUTER)")
    p.add_argument("-o", "--output", default="generated.png", help="output PNG (default generated.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def parse_size(text: str) -> tuple[int | None, int | None]:
    """'512x768' -> (512, 768); '' -> (None, None): the model's native size."""
    text = (text or "").strip().lower()
    if not text:
        return None, None
    w, sep, h = text.partition("x")
    try:
        width, height = int(w), int(h if sep else w)
    except ValueError:
        raise CliError(f"--size {text!r}: write WIDTHxHEIGHT, e.g. 512x512") from None
    if width <= 0 or height <= 0 or width % 8 or height % 8:
        raise CliError(f"--size {text!r}: width and height must be positive multiples of 8")
    return width, height


def run(args) -> int:
    from PIL.PngImagePlugin import PngInfo

    from embeddings.library import EmbeddingLibrary
    from embeddings.prompt import PromptEncoder, generate, generate_style_mix
    from models.load import load_base_model
    from training.device import place_for_generation
    from training.previews import make_scheduler
    from workspace.atomic import atomic_path

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        out = out.with_name(out.name + ".png")
    if out.exists() and not args.overwrite:
        raise CliError(f"{out} already exists (use --overwrite to replace it)")
    width, height = parse_size(args.size)
    dd = data_dir(args)
    model = load_base_model(args.model, dd)
    place_for_generation(model)
    lib = EmbeddingLibrary.for_data(dd, model.widths, model.tokenizers[0])
    lib.refresh()
    embs = list(lib.loaded().values())
    used = sorted(PromptEncoder.for_embeddings(model, embs).tokenize([args.prompt, args.negative]).used) if embs else []
    settings = dict(negative_prompt=args.negative, seed=args.seed, steps=args.steps, cfg=args.cfg, width=width,
                    height=height, scheduler=make_scheduler(model, args.scheduler))
    mix_note = ""
    if args.style_mix:
        inner, outer = (_library_embedding(lib, spec) for spec in args.style_mix)
        if inner.name not in used:
            raise CliError(f"--style-mix: the prompt does not name {inner.name!r}; write it where the mix goes")
        row = generate_style_mix(model, args.prompt, inner, outer, embs, _parse_splits(args.splits), **settings)
        image = _side_by_side([im for _, im in row])
        splits = [s for s, _ in row]
        mix_note = f", Style mix: {inner.name} inner / {outer.name} outer, splits {splits}"
        print(f"style mix: {inner.name} on the coarse layers, {outer.name} on the outer N at each end, "
              f"N = {', '.join(map(str, splits))} (left to right)")
    else:
        image = generate(model, args.prompt, embs, **settings)
    info = PngInfo()
    neg = f"\nNegative prompt: {args.negative}" if args.negative else ""
    info.add_text("parameters", f"{args.prompt}{neg}\nSteps: {args.steps}, Sampler: {args.scheduler}, "
                                f"CFG scale: {args.cfg}, Seed: {args.seed}, Size: {image.width}x{image.height}, "
                                f"Model hash: {model.short_hash}, Model: {model.name}{mix_note}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    print(f"model: {model.label}")
    print("embeddings used: " + (", ".join(used) if used else "none (no library name found in the prompt)"))
    for entry in lib.skipped():
        if entry.name in args.prompt:
            print(f"not usable with this model: {entry.name} ({entry.reason})")
    print(f"wrote {out} ({image.width}x{image.height})")
    return 0


def _library_embedding(lib, spec: str):
    """A usable library embedding by name or path, or a CliError saying why not."""
    from embeddings.embedding import EmbeddingError

    try:
        entry = lib.resolve(spec)
        emb = entry.require_embedding()
    except EmbeddingError as e:
        raise CliError(f"--style-mix {spec}: {e}") from None
    if not entry.ok:
        raise CliError(f"--style-mix {spec}: not usable with this model ({entry.reason})")
    return emb


def _parse_splits(text: str) -> list[int] | None:
    from embeddings.embedding import EmbeddingError
    from embeddings.prompt import parse_splits

    try:
        return parse_splits(text)
    except EmbeddingError as e:
        raise CliError(f"--splits: {e}") from None


def _side_by_side(images):
    from PIL import Image

    row = Image.new("RGB", (sum(im.width for im in images), max(im.height for im in images)))
    x = 0
    for im in images:
        row.paste(im, (x, 0))
        x += im.width
    return row
