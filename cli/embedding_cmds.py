"""`create`, `inspect` and `convert`: embeddings from the command line."""

from __future__ import annotations

from pathlib import Path

from cli import CliError
from cli.common import data_dir, print_json
from embeddings.create import create_embedding, plan_embedding, start_from_embedding
from embeddings.embedding import EmbeddingError
from embeddings.families import known_widths
from embeddings.formats import FORMATS, export_name, load_embedding, save_embedding
from embeddings.formats.diffusers_format import pair_paths
from embeddings.formats.report import inspect_file
from embeddings.kinds import KINDS, get_kind, kind_of
from embeddings.library import EmbeddingLibrary
from models.load import load_base_model


def register(sub) -> None:
    p = sub.add_parser("create", help="create a new embedding from init text")
    p.add_argument("name")
    p.add_argument("--init-text", default="*", help="words close to the concept (default '*')")
    p.add_argument("--vectors", type=int, default=1, help="vectors per token (1-75)")
    p.add_argument("--init", choices=["text", "zeros", "random"], default="text", help="how to fill the vectors")
    p.add_argument("--model", default="tiny", help="toy, tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id")
    p.add_argument("--format", choices=["safetensors", "pt"], default="safetensors")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--kind", choices=list(KINDS), default="standard",
                   help="; ".join(f"{k.name}: {k.summary}" for k in KINDS.values()))
    p.add_argument("--from", dest="start_from", default=None, metavar="EMBEDDING",
                   help="start from this standard embedding's vectors (a library name or a file) instead of init text")
    seen: set[str] = set()
    for kind in KINDS.values():  # each kind's own creation options, once each
        for opt in kind.options:
            if opt.name not in seen:
                seen.add(opt.name)
                p.add_argument(f"--{opt.name.replace('_', '-')}", dest=f"kind_{opt.name}",
                               choices=opt.choices or None, default=opt.default, help=f"({kind.name}) {opt.help}")
    p.set_defaults(func=run_create)
    register_inspect_convert(sub)


def run_create(args) -> int:
    dd = data_dir(args)
    target = dd.embeddings / f"{args.name.strip()}.{args.format}"
    if target.exists() and not args.overwrite:
        raise CliError(f"{target} already exists (use --overwrite to replace it)")
    kind = get_kind(args.kind)
    if args.format != "safetensors" and kind.name != "standard":
        raise CliError(f"a {kind.name} embedding is kept whole only in .safetensors (and our PNG); use --format "
                       "safetensors, and convert to .pt later for other tools")
    model = load_base_model(args.model, dd)
    print(f"model: {model.label}")
    if args.start_from:
        base = EmbeddingLibrary.for_data(dd).resolve(args.start_from).require_embedding()
        try:
            emb = start_from_embedding(base, args.name, model)
        except EmbeddingError as e:
            raise CliError(f"--from {args.start_from}: {e}") from None
        print(f"starting from {base.name}: {base.num_vectors} vector(s)")
    else:
        plan = plan_embedding(model.tokenizers[0], args.name, args.init_text, args.vectors, args.init)
        emb = create_embedding(model, args.name, args.init_text, args.vectors, args.init)
        for line in plan.describe():
            print(line)
    try:
        emb = kind.make(emb, model.unet, model=model, **{o.name: getattr(args, f"kind_{o.name}") for o in kind.options})
    except EmbeddingError as e:
        raise CliError(str(e)) from None
    print(f"kind: {kind.label}: {kind.summary}")
    for key, value in kind.describe(emb).items():
        if key != "kind" and not key.endswith("_norms"):  # the norms are inspect's
            print(f"  {key}: {len(value) if isinstance(value, list) else value}")
    path = save_embedding(emb, target)
    print(f"created {path}")
    return 0


def register_inspect_convert(sub) -> None:
    p = sub.add_parser("inspect", help="show what an embedding file holds and which models it fits")
    p.add_argument("file", help="a .pt, .bin, .safetensors, .png or .webp embedding")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run_inspect)

    p = sub.add_parser("convert", help="write an embedding file in another format")
    p.add_argument("file", help="the embedding to convert")
    p.add_argument("--to", required=True, choices=FORMATS, help="target format")
    p.add_argument("-o", "--output", default=None,
                   help="output file or folder (default: next to FILE, named after the embedding)")
    p.add_argument("--preview", default=None, help="picture for --to png (default: a plain picture)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run_convert)


def run_inspect(args) -> int:
    report = inspect_file(Path(args.file))
    if args.json:
        print_json(report)
        return 0
    meta = {k: v for k, v in report["metadata"].items() if k not in ("format", "sha256")}
    widths = ", ".join(f"{k} {w}" for k, w in report["widths"].items())
    fits = ", ".join(report["fits"]) or f"no known model family (widths: {known_widths()})"
    print(f"file:     {report['file']}")
    print(f"format:   {report['format']}")
    print(f"name:     {report['name']}")
    print(f"kind:     {report['kind']}")
    for key, value in report.get("kind_details", {}).items():
        if key == "groups":
            print(f"  groups: {len(value)} ({', '.join(value[:4])}{' ...' if len(value) > 4 else ''})")
        elif key.endswith("_norms"):  # group_norms, anchor_norms: a row of vector norms per set
            for enc, rows in value.items():
                print(f"  {enc} norms per {key.removesuffix('_norms')}: "
                      + " | ".join(" ".join(f"{x:.3f}" for x in row) for row in rows))
        else:
            print(f"  {key}: {value}")
    print(f"vectors:  {report['vectors']}")
    print(f"width:    {widths}")
    print(f"fits:     {fits}")
    print(f"step:     {report['step']}")
    print(f"healthy:  {'yes' if report['healthy'] else 'NO: contains NaN/inf'}")
    print(f"sha256:   {(report['sha256'] or '')[:12]}")
    print("norms:")
    for key, norms in report["norms"].items():
        shown = " ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in norms)
        print(f"  {key}: {shown}")
    if meta:
        print("metadata:")
        for k, v in meta.items():
            print(f"  {k}: {v}")
    return 0


def run_convert(args) -> int:
    src = Path(args.file)
    emb = load_embedding(src)
    if not emb.is_finite():
        raise CliError(f"{src.name}: contains NaN/inf values; refusing to convert a broken embedding")
    if args.output is None:
        out = src.parent / export_name(emb, args.to)
    else:
        out = Path(args.output)
        if out.is_dir() or args.output.endswith(("/", "\\")):
            out = out / export_name(emb, args.to)
        else:
            # The file name is the embedding's name in A1111 and the token in diffusers: keep them equal.
            emb = emb.copy(name=out.stem if out.suffix else out.name)
    if not out.suffix:
        out = out.with_name(out.name + Path(export_name(emb, args.to)).suffix)
    targets = [out]
    if args.to == "diffusers" and len(emb.vectors) == 2:
        targets.append(pair_paths(out)[1])
    for t in targets:
        if t.exists() and t.resolve() == src.resolve():
            raise CliError(f"{t} is the input file; choose another output with -o")
        if t.exists() and not args.overwrite:
            raise CliError(f"{t} already exists (use --overwrite to replace it)")
    written = save_embedding(emb, out, args.to, preview=args.preview)
    extra = f" and {targets[1].name}" if len(targets) > 1 else ""
    print(f"wrote {written}{extra} ({args.to}, {emb.num_vectors} vectors, name {emb.name!r})")
    note = kind_of(emb).export_note(emb, args.to)
    if note:
        print(f"note: {emb.kind} embedding: {note}")
    return 0
