"""`create`, `inspect` and `convert`: embeddings from the command line."""

from __future__ import annotations

from cli import CliError
from cli.common import data_dir


def register(sub) -> None:
    p = sub.add_parser("create", help="create a new embedding from init text")
    p.add_argument("name")
    p.add_argument("--init-text", default="*", help="words close to the concept (default '*')")
    p.add_argument("--vectors", type=int, default=1, help="vectors per token (1-75)")
    p.add_argument("--init", choices=["text", "zeros", "random"], default="text", help="how to fill the vectors")
    p.add_argument("--model", default="tiny", help="tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id")
    p.add_argument("--format", choices=["safetensors", "pt"], default="safetensors")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run_create)


def run_create(args) -> int:
    from embeddings.create import create_embedding, plan_embedding
    from embeddings.formats import save_embedding
    from models.load import load_base_model

    dd = data_dir(args)
    target = dd.embeddings / f"{args.name.strip()}.{args.format}"
    if target.exists() and not args.overwrite:
        raise CliError(f"{target} already exists (use --overwrite to replace it)")
    model = load_base_model(args.model, dd)
    plan = plan_embedding(model.tokenizers[0], args.name, args.init_text, args.vectors, args.init)
    emb = create_embedding(model, args.name, args.init_text, args.vectors, args.init)
    print(f"model: {model.label}")
    for line in plan.describe():
        print(line)
    path = save_embedding(emb, target)
    print(f"created {path}")
    return 0
