"""`models`: list the base models this app can use, inspect one, download one, export one."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import snapshot_download

from cli import CliError
from cli.common import data_dir, print_json
from models.discovery import discover_models
from models.ldm_convert import save_single_file
from models.load import HUB_PATTERNS, hf_cache_dir, hub_downloads_enabled, load_base_model
from models.single_file import load_single_file


def register(sub) -> None:
    p = sub.add_parser(
        "models",
        help="list base models (built-in, data/models, Hugging Face cache); inspect, download or export one",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--skipped", action="store_true", help="also say which weight files were skipped and why")
    p.add_argument("--info", metavar="MODEL", help="load MODEL (name, folder, file or hub id) and describe it")
    p.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], help="with --info on a single file")
    p.add_argument("--download", metavar="HUB_ID", help="download a diffusers model (needs HF_HUB_OFFLINE=0)")
    p.add_argument(
        "--export", nargs=2, metavar=("MODEL", "FILE"),
        help="write MODEL as one A1111-style checkpoint FILE (.safetensors or .ckpt)",
    )
    p.set_defaults(func=run_models)


def run_models(args) -> int:
    if args.download:
        return _download(args)
    if args.info:
        return _info(args)
    if args.export:
        return _export(args)
    return _list(args)


def _list(args) -> int:
    skipped: list = []
    models = discover_models(data_dir(args), skipped=skipped)
    if args.json:
        value: dict | list = [m.to_dict() for m in models]
        if args.skipped:
            value = {"models": value, "skipped": [s.__dict__ for s in skipped]}
        print_json(value)
        return 0
    rows = [(m.name, m.kind, m.family or "?", _size(m.size), m.note or m.path or "") for m in models]
    header = ("NAME", "KIND", "FAMILY", "SIZE", "WHERE / NOTE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    if args.skipped:
        for s in skipped:
            print(f"skipped {s.path}: {s.reason}")
    elif skipped:
        print(f"({len(skipped)} weight file(s) skipped; --skipped says why)")
    return 0


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _info(args) -> int:
    dd = data_dir(args)
    path = Path(args.info).expanduser()
    if args.prediction_type and path.is_file():
        model = load_single_file(path, dd, prediction_type=args.prediction_type)
    else:
        model = load_base_model(args.info, dd)
    info = {**model.describe(), **{k: v for k, v in model.extra.items() if isinstance(v, str)}}
    if args.json:
        print_json(info)
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _download(args) -> int:
    if not hub_downloads_enabled():
        raise CliError(f"downloads are off: run `HF_HUB_OFFLINE=0 python app.py models --download {args.download}`")
    try:
        folder = snapshot_download(args.download, cache_dir=hf_cache_dir(), **HUB_PATTERNS)
    except (OSError, ValueError) as e:
        raise CliError(f"{args.download} could not be downloaded: {str(e).strip().splitlines()[0]}") from e
    print(f"downloaded {args.download} to {folder}")
    return 0


def _export(args) -> int:
    spec, target = args.export
    target_path = Path(target).expanduser()
    if target_path.exists():
        raise CliError(f"{target_path} already exists")
    model = load_base_model(spec, data_dir(args))
    save_single_file(model, target_path)
    print(f"wrote {target_path} ({model.family})")
    return 0
