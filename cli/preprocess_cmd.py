"""`preprocess SRC DST`: the same preprocess job the UI runs, in this process, with a tqdm bar
fed by the job's events (so what the CLI shows is exactly what the UI would show)."""

from __future__ import annotations

import threading

from tqdm import tqdm

from cli import CliError
from cli.common import data_dir, print_json
from jobs.registry import Job, JobState, run_job
from jobs.view import JobView, fold
from preprocessing import PreprocessError, PreprocessOptions, preprocess_job
from preprocessing.captioners import CaptionerError
from preprocessing.job import check_folders, load_captioner


def register(sub) -> None:
    p = sub.add_parser("preprocess", help="turn a folder of images into a clean captioned dataset folder")
    p.add_argument("src", help="source folder (read only, searched recursively)")
    p.add_argument("dst", nargs="?", default=None, help="destination folder (not needed with --caption-only)")
    g = p.add_argument_group("size and crop")
    g.add_argument("--size", type=int, default=None, help="square target size (sets width and height; default 512)")
    g.add_argument("--width", type=int, default=None)
    g.add_argument("--height", type=int, default=None)
    g.add_argument("--crop", choices=["center", "fit", "focal", "keep"], default="center",
                   help="center crop, fit (keep aspect, for buckets), focal (most detailed region), keep (no resize)")
    g.add_argument("--upscale", action="store_true", help="enlarge images smaller than the target")
    g.add_argument("--split", action="store_true", help="split images far from the target aspect into overlapping crops")
    g.add_argument("--split-threshold", type=float, default=0.5)
    g.add_argument("--split-overlap", type=float, default=0.2)
    g.add_argument("--flip", action="store_true", help="also save mirrored copies (same captions)")
    g = p.add_argument_group("pixels")
    g.add_argument("--keep-alpha", action="store_true", help="keep transparency (RGBA PNG) for alpha-weighted loss")
    g.add_argument("--background", default="#ffffff", help="colour under transparent pixels (default white)")
    g.add_argument("--format", dest="output_format", choices=["png", "jpg", "webp"], default="png")
    g.add_argument("--max-pixels", type=int, default=None, help="refuse images with more pixels (0: no limit)")
    g.add_argument("--max-aspect", type=float, default=None, help="refuse longer:shorter ratios above this (0: no limit)")
    g = p.add_argument_group("captions")
    g.add_argument("--captioner", choices=["none", "blip"], default="none")
    g.add_argument("--blip-model", default=None,
                   help="hub id, local folder, or tiny-blip (random captions) (default Salesforce/blip-image-captioning-base)")
    g.add_argument("--allow-download", action="store_true", help="let BLIP be downloaded when not found locally")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    g.add_argument("--batch-size", type=int, default=8, help="images per captioning batch")
    g.add_argument("--caption-to", choices=["sidecar", "filename"], default="sidecar")
    g.add_argument("--existing-caption", choices=["ignore", "keep", "prepend", "append"], default="ignore",
                   help="what to do with a source image's .txt caption")
    g.add_argument("--prefix", default="", help="text put before every caption (e.g. a trigger word)")
    g.add_argument("--suffix", default="", help="text put after every caption")
    g.add_argument("--caption-only", action="store_true", help="caption SRC in place: writes only .txt files")
    g = p.add_argument_group("folders")
    g.add_argument("--on-existing", choices=["skip", "overwrite", "new-folder"], default="skip",
                   help="when outputs already exist in DST")
    g.add_argument("--no-recursive", action="store_true", help="only the top level of SRC")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def options_from_args(args, cache_dir: str | None = None):
    defaults = PreprocessOptions()
    width = args.width or args.size or defaults.width
    height = args.height or args.size or defaults.height
    opts = PreprocessOptions(
        width=width, height=height, crop=args.crop, upscale=args.upscale, split=args.split,
        split_threshold=args.split_threshold, split_overlap=args.split_overlap, flip=args.flip,
        keep_alpha=args.keep_alpha, background=args.background, output_format=args.output_format,
        max_pixels=defaults.max_pixels if args.max_pixels is None else args.max_pixels,
        max_aspect=defaults.max_aspect if args.max_aspect is None else args.max_aspect,
        captioner=args.captioner, blip_model=args.blip_model or defaults.blip_model,
        allow_download=args.allow_download, device=args.device, caption_batch_size=args.batch_size,
        caption_to=args.caption_to, existing_caption=args.existing_caption, prefix=args.prefix,
        suffix=args.suffix, caption_only=args.caption_only, on_existing=args.on_existing.replace("-", "_"),
        recursive=not args.no_recursive, cache_dir=cache_dir,
    )
    return opts.validate()


def run(args) -> int:
    if args.dst is None and not args.caption_only:
        raise CliError("give a destination folder DST (or --caption-only to caption SRC in place)")
    cache = str(data_dir(args).cache) if args.data_dir else None
    options = options_from_args(args, cache_dir=cache)
    captioner = None
    try:
        # Mistakes in folders and a missing BLIP are one-line errors before any work starts.
        check_folders(args.src, args.dst, options)
        if options.wants_captions:
            captioner = load_captioner(options)
    except (PreprocessError, CaptionerError) as e:
        raise CliError(str(e)) from e
    try:
        job = Job(id="preprocess-cli", kind="preprocess", title=f"preprocess {args.src}",
                  fn=preprocess_job(args.src, args.dst, options, captioner=captioner))
        worker = threading.Thread(target=run_job, args=(job,), name="preprocess", daemon=True)
        worker.start()
        warnings = _follow(job, worker, quiet=args.quiet or args.json)
    finally:
        if captioner is not None:
            captioner.close()

    if job.state == JobState.FAILED:
        raise CliError(f"preprocessing failed: {job.error or 'unknown error'}")
    result = job.result or {}
    if args.json:
        print_json(result)
    else:
        for w in warnings:
            print(f"warning: {w}")
        print(f"{len(result.get('outputs', []))} output(s) in {result.get('dst')}, "
              f"{result.get('captions_written', 0)} caption(s), {len(result.get('skipped', []))} skipped, "
              f"{len(result.get('already_done', []))} already done, {len(result.get('small', []))} small (not upscaled)")
    if job.state == JobState.INTERRUPTED:
        return 130
    return 0


def _follow(job, worker: threading.Thread, quiet: bool) -> list[str]:
    """Show the job's view (jobs.view) until it ends and return its warnings, oldest first;
    Ctrl-C asks the job to stop and waits for it."""
    bar = None if quiet else tqdm(total=0, unit="img", desc="preprocess")
    view = JobView(title=job.title)
    cursor = 0
    try:
        while True:
            try:
                new, cursor = job.wait_events(cursor, timeout=0.5)
                shown = view.progress
                fold(view, new)
                p = view.progress
                if bar is not None and p is not None and p is not shown:
                    bar.total = p.total
                    bar.n = p.done
                    bar.set_postfix_str(str(p.file or "")[-40:], refresh=False)
                    bar.refresh()
                if job.state.done and not worker.is_alive():
                    break
            except KeyboardInterrupt:
                job.request_stop()
                if bar is not None:
                    bar.write("stopping after the current batch ...")
    finally:
        if bar is not None:
            bar.close()
        worker.join()
    return view.warnings[::-1]
