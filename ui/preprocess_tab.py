"""Preprocess tab: images in, a captioned dataset folder out, then a caption editor.

Images come from a dropped folder (our JS drop handler walks it), many dropped files, the folder
picker, or a folder on the server (read in place: no copies, no size limits). Uploads are copied
into a staging folder first so the preprocess job reads one ordinary folder whatever the source.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from jobs.view import JobView, ViewCache
from preprocessing import list_captions, preprocess_job, set_caption
from preprocessing import options as o
from preprocessing.captions import CAPTION_TARGETS, EXISTING_POLICIES
from preprocessing.geometry import CROP_MODES
from preprocessing.images import IMAGE_SUFFIXES
from preprocessing.options import PreprocessOptions
from ui.common import FieldText, Refresh, fail, field_text, grouped_fields, short, user_errors, widget_for_field
from ui.state import AppContext
from ui.train_tab import progress_html

BASIC = ("width", "height", "crop", "captioner", "blip_model", "flip", "prefix", "suffix", "on_existing")
# "More options" by topic; a PreprocessOptions field in no group lands in "Other".
MORE: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Size & crop", ("upscale", "split", "multiple_of", "split_threshold", "split_overlap", "focal_edges_weight",
                     "focal_entropy_weight")),
    ("Pixels", ("keep_alpha", "output_format", "background", "max_pixels", "max_aspect")),
    ("Captions", ("caption_only", "allow_download", "caption_to", "existing_caption", "device",
                  "caption_batch_size", "caption_max_tokens", "caption_beams")),
    ("Folders", ("recursive",)),
)
T = FieldText
TEXTS: dict[str, FieldText] = {
    "width": T("Width (px)"),
    "height": T("Height (px)"),
    "crop": T("Crop", "center: cut the middle; fit: whole picture, own aspect; focal: most detailed part; keep: as is"),
    "captioner": T("Captioner", "blip writes a caption per image"),
    "blip_model": T("BLIP model", "Hub id or folder; tiny-blip = built-in random, for trying"),
    "flip": T("Also save mirrored copies", "Same caption"),
    "prefix": T("Caption prefix", "Put before every caption, e.g. a trigger word"),
    "suffix": T("Caption suffix"),
    "on_existing": T("If outputs exist", "skip them, overwrite, or write into a new folder"),
    "upscale": T("Upscale small images", "Otherwise they keep their size and are reported"),
    "split": T("Split very wide / tall images", "Into overlapping crops instead of one"),
    "multiple_of": T("Sides a multiple of (px)", "The VAE needs 8"),
    "split_threshold": T("Split when aspect is off by", "0 to 1"),
    "split_overlap": T("Split overlap", "0 to 0.9 of a crop"),
    "focal_edges_weight": T("Focal crop: edges weight"),
    "focal_entropy_weight": T("Focal crop: detail weight"),
    "keep_alpha": T("Keep transparency", "RGBA PNG, for the alpha-weighted loss"),
    "output_format": T("Save as"),
    "background": T("Background colour", "Under transparent pixels, when they are not kept"),
    "max_pixels": T("Refuse images above (pixels)", "Guards against decompression bombs; 0 = no limit"),
    "max_aspect": T("Refuse aspect ratios above", "0 = no limit"),
    "caption_only": T("Only write captions", "Caption the source folder in place; images untouched"),
    "allow_download": T("Allow model download", "Fetch the BLIP model from the hub if not cached"),
    "caption_to": T("Write captions to", "sidecar: a .txt beside the image; filename: A1111 style"),
    "existing_caption": T("Existing .txt captions", "ignore; keep it; prepend / append: put it before / after the new one"),
    "device": T("Captioner device", "auto, cpu, cuda, cuda:1…"),
    "caption_batch_size": T("Caption batch size"),
    "caption_max_tokens": T("Caption length (tokens)"),
    "caption_beams": T("Caption beams", "More = better captions, slower"),
    "recursive": T("Include subfolders"),
}
HIDDEN = ("cache_dir",)  # set by the app: helper models live in the data folder's cache
POLL_SECONDS = 1.0
GRID_COLUMNS = ["image", "file", "caption"]


def _choices() -> dict[str, tuple[str, ...]]:
    return {"crop": CROP_MODES, "captioner": o.CAPTIONERS, "on_existing": o.ON_EXISTING,
            "output_format": o.OUTPUT_FORMATS, "caption_to": CAPTION_TARGETS, "existing_caption": EXISTING_POLICIES}


def _fields() -> list[tuple[str, Any, Any]]:
    hints = typing.get_type_hints(PreprocessOptions)
    return [(f.name, hints[f.name], f.default) for f in dataclasses.fields(PreprocessOptions)
            if f.name not in HIDDEN]


def _component(name: str, hint: Any, default: Any, **kwargs: Any):
    text = field_text(name, TEXTS)
    eid = f"pre_{name}"
    if name == "blip_model":  # a dropdown that also takes any hub id or folder
        return gr.Dropdown(["tiny-blip", str(default)], value=str(default), allow_custom_value=True, elem_id=eid,
                           label=text.label, info=text.info, **kwargs)
    return widget_for_field(name, hint, default, label=text.label, info=text.info, choices=_choices().get(name),
                            elem_id=eid, **kwargs)


def options_from_form(ctx: AppContext, names: list[str], values: list[Any]):
    hints = {n: h for n, h, _ in _fields()}
    d: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        hint = hints[name]
        if hint is int:
            d[name] = int(value) if value is not None else 0
        elif hint is float:
            d[name] = float(value) if value is not None else 0.0
        elif hint is bool:
            d[name] = bool(value)
        else:
            d[name] = "" if value is None else str(value)
    d["cache_dir"] = str(ctx.data.cache)
    return PreprocessOptions.from_dict(d)


def stage_uploads(ctx: AppContext, paths: list[str]) -> Path:
    """Copy uploads into one staging folder (Gradio gives flat temp paths, unsorted).

    Every file is copied, not only images: the preprocess job then names each file it cannot
    use and why, instead of the upload dropping it without a word."""
    uploads = [Path(p) for p in paths]
    if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in uploads):
        raise fail(f"None of the uploaded files is an image ({' '.join(IMAGE_SUFFIXES)})")
    folder = ctx.data.cache / "uploads" / time.strftime("%Y%m%d-%H%M%S")
    n = 2
    base = folder
    while folder.exists():
        folder = base.with_name(f"{base.name}-{n}")
        n += 1
    folder.mkdir(parents=True)
    seen: set[str] = set()
    for p in sorted(uploads, key=lambda q: q.name):
        name = p.name
        k = 2
        while name.lower() in seen:  # two folders can hold files with the same name
            name = f"{p.stem}-{k}{p.suffix}"
            k += 1
        seen.add(name.lower())
        shutil.copyfile(p, folder / name)
    return folder


def dataset_folder(ctx: AppContext, name: str) -> Path:
    name = (name or "").strip()
    if not name:
        raise fail("Name the new dataset first")
    if Path(name).name != name or name.startswith("."):
        raise fail(f"Dataset name {name!r} must be a plain folder name (no / or leading dot)")
    return ctx.data.datasets / name


TOY_EXAMPLE = "bluecircle"  # the dataset name the toy example gets when the name box is empty


def toy_example(ctx: AppContext, name: str) -> tuple[str, str]:
    """Write the toy world's planted concept (eight blue circles captioned with their background
    only) as a dataset: the first run on the `toy` model needs no pictures of one's own.
    Returns (message, dataset name); refuses a folder that already holds files."""
    from models.toy.planted import TEMPLATE, make_planted_dataset

    folder = dataset_folder(ctx, (name or "").strip() or TOY_EXAMPLE)
    if folder.is_dir() and any(folder.iterdir()):
        raise fail(f"Dataset {folder.name!r} already has files: name another one")
    make_planted_dataset(folder)
    return (f"Wrote the toy example in **{folder.name}**: 8 pictures of a blue circle, a pair the built-in toy "
            f"model never saw, captioned with their background only. Train it on *toy* with the template "
            f"*{TEMPLATE}*.", folder.name)


def start(ctx: AppContext, name: str, files: list[str] | None, folder_files: list[str] | None, server_folder: str,
          options) -> str:
    dst = dataset_folder(ctx, name)
    server_folder = (server_folder or "").strip()
    uploads = list(files or []) + list(folder_files or [])
    if server_folder and uploads:
        raise fail("Use either uploaded images or a server folder, not both")
    if server_folder:
        src = Path(server_folder).expanduser()
        if not src.is_dir():
            raise fail(f"{src}: no such folder on the server")
    elif uploads:
        src = stage_uploads(ctx, uploads)
    elif options.caption_only and dst.is_dir():
        src = dst
    else:
        raise fail("Add images: drop a folder or files, pick a folder, or type a folder on the server")
    ahead = len(ctx.registry.active())
    ctx.registry.submit("preprocess", f"preprocess {src.name} -> {dst.name}", preprocess_job(src, dst, options))
    where = "" if not ahead else f" (queued behind {ahead} job(s))"
    return f"Preprocessing {src} into dataset **{dst.name}**{where}."


@dataclass
class PreView:
    status: str
    progress: float
    skipped: pd.DataFrame
    dataset: str | None
    done: bool
    failed: bool = False


def current_job(ctx: AppContext):
    jobs = ctx.registry.jobs("preprocess")
    return jobs[-1] if jobs else None


def pre_view(view: JobView | None) -> PreView:
    """What the page shows about a preprocess job, from the folded view of its events."""
    empty = pd.DataFrame(columns=["file", "reason"])
    if view is None:
        return PreView("", 0.0, empty, None, True)
    p = view.progress
    done, total = (p.done, p.total) if p else (0, 0)
    status = f"**{view.title}** — {view.state}" + (f" · {done}/{total}" if total else "")
    msgs = view.messages[:3][::-1]
    if msgs:
        status += "\n\n" + "\n".join(f"- {short(m)}" for m in msgs)
    if view.error:
        status += f"\n\n**Failed:** {short(view.error)}"
    result = view.result if isinstance(view.result, dict) else None
    skipped = empty
    dataset = None
    if result:
        rows = [(Path(p).name, r) for p, r in result.get("skipped", [])]
        skipped = pd.DataFrame(rows, columns=["file", "reason"]) if rows else empty
        dataset = Path(result.get("dst", "")).name or None
    elif view.warnings:
        skipped = pd.DataFrame([(t, "") for t in view.warnings[::-1]], columns=["file", "reason"])
    return PreView(status, done / total if total else (1.0 if view.done else 0.0), skipped, dataset, view.done,
                   failed=view.error is not None)


def caption_grid(ctx: AppContext, dataset: str) -> pd.DataFrame:
    """Thumbnail, file name and caption per image: the caption column is editable."""
    if not dataset:
        return pd.DataFrame(columns=GRID_COLUMNS)
    folder = dataset_folder(ctx, dataset)
    rows = [(f"![{it.path.name}](/gradio_api/file={it.path})", it.path.name, it.caption)
            for it in list_captions(folder)]
    return pd.DataFrame(rows, columns=GRID_COLUMNS)


def save_captions(ctx: AppContext, dataset: str, grid: pd.DataFrame) -> str:
    folder = dataset_folder(ctx, dataset)
    current = {it.path.name: it for it in list_captions(folder)}
    changed, problems = 0, []
    for _, row in grid.iterrows():
        name, text = str(row["file"]), "" if row["caption"] is None else str(row["caption"])
        item = current.get(name)
        if item is None:
            problems.append(f"{name}: no longer in {folder.name}")
            continue
        if item.has_caption and item.caption == text.strip():
            continue
        try:
            set_caption(item.path, text)
            changed += 1
        except (ValueError, OSError) as e:
            problems.append(str(e))
    msg = f"Saved {changed} caption(s) in **{folder.name}**."
    if problems:
        msg += " Not saved: " + "; ".join(problems[:10])
    return msg


def build(ctx: AppContext) -> Refresh:
    fields = _fields()
    comps: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            name = gr.Textbox(label="New dataset name", placeholder="my-cat", elem_id="pre_name")
            files = gr.File(label="Drop a folder or many images here", file_count="multiple", file_types=["image"],
                            elem_id="pre_files", elem_classes=["ti-folder-drop"])
            with gr.Accordion("Other sources", open=False):
                folder_files = gr.File(label="Pick a folder", file_count="directory", elem_id="pre_folder")
                server_folder = gr.Textbox(label="Or a folder on this machine (read in place)",
                                           placeholder="/home/me/pictures/cat", elem_id="pre_server_folder")
                toy_btn = gr.Button("Or the toy example: 8 pictures of a blue circle, for the toy model",
                                    elem_id="pre_toy_example", size="sm")
            hints = {n: h for n, h, _ in fields}
            defaults = {n: d for n, _, d in fields}

            def make(fname: str, **kw: Any):
                return _component(fname, hints[fname], defaults[fname], **kw)

            comps.update(grouped_fields([("", BASIC)], hints, make, per_row=3, checkboxes_first=False))
            with gr.Accordion("More options", open=False):
                grouped = {n for _, group in MORE for n in group}
                other = tuple(n for n in hints if n not in grouped and n not in comps)
                comps.update(grouped_fields([*MORE, ("Other", other)], hints, make, per_row=3))
            run_btn = gr.Button("Preprocess", variant="primary", elem_id="pre_run")
            stop_btn = gr.Button("Stop", variant="stop", elem_id="pre_stop")
        with gr.Column(scale=3):
            status = gr.Markdown(elem_id="pre_status")
            bar = gr.HTML(progress_html(0.0), elem_id="pre_progress")
            skipped = gr.Dataframe(headers=["file", "reason"], label="Skipped files", interactive=False,
                                   elem_id="pre_skipped", wrap=True, column_widths=["30%", "70%"])
    gr.Markdown("### Captions")
    with gr.Row():
        dataset = gr.Dropdown(ctx.datasets(), label="Dataset", allow_custom_value=True, elem_id="pre_dataset")
        save_btn = gr.Button("Save captions", elem_id="pre_save")
    grid = gr.Dataframe(headers=GRID_COLUMNS, datatype=["markdown", "str", "str"], static_columns=[0, 1],
                        interactive=True, wrap=True, elem_id="pre_grid", label="Edit captions", max_height=700,
                        column_widths=["120px", "25%", "60%"])
    save_msg = gr.Markdown(elem_id="pre_save_msg")
    names = [n for n, _, _ in fields]
    form = [comps[n] for n in names]
    seen = gr.State(None)
    timer = gr.Timer(POLL_SECONDS, active=False)  # the app starts it while the Preprocess tab is shown

    @user_errors("Preprocess")
    def run_fn(n, f, ff, sf, *values):
        opts = options_from_form(ctx, names, list(values))
        return start(ctx, n, f, ff, sf, opts)

    run_btn.click(run_fn, [name, files, folder_files, server_folder, *form], status, api_name="preprocess",
                  concurrency_id="pre_ctl", concurrency_limit=1)

    @user_errors("Toy example")
    def toy_fn(n):
        message, made = toy_example(ctx, n)
        return message, gr.Dropdown(choices=ctx.datasets(), value=made), caption_grid(ctx, made)

    toy_btn.click(toy_fn, name, [status, dataset, grid], api_name="preprocess_toy_example")

    @user_errors("Stop")
    def stop_fn():
        job = current_job(ctx)
        if job is None or job.state.done:
            raise fail("No preprocessing is going on")
        job.request_stop()
        return "Stopping after the current batch…"

    stop_btn.click(stop_fn, None, status, api_name="preprocess_stop")

    views = ViewCache()  # one folded view per job, shared by every open tab

    def poll(cur):
        job = current_job(ctx)
        view = None if job is None else views.get(job)
        key = None if view is None else (job.id, view.seen)
        if key == cur:
            return [gr.skip()] * 5 + [cur]
        v = pre_view(view)
        if v.done and v.dataset:
            return [v.status, progress_html(v.progress, v.failed), v.skipped,
                    gr.Dropdown(choices=ctx.datasets(), value=v.dataset), caption_grid(ctx, v.dataset), key]
        return [v.status, progress_html(v.progress, v.failed), v.skipped, gr.skip(), gr.skip(), key]

    timer.tick(poll, seen, [status, bar, skipped, dataset, grid, seen], api_name="preprocess_poll",
               api_visibility="undocumented", show_progress="hidden", concurrency_limit=None)

    @user_errors("Captions")
    def grid_fn(d):
        return caption_grid(ctx, d)

    dataset.change(grid_fn, dataset, grid, api_name="captions")

    @user_errors("Save captions")
    def save_fn(d, g):
        return save_captions(ctx, d, g), caption_grid(ctx, d)

    save_btn.click(save_fn, [dataset, grid], [save_msg, grid], api_name="save_captions")

    def refresh(d):
        return gr.Dropdown(choices=ctx.datasets(), value=d)

    refresher = Refresh(refresh, [dataset], [dataset])
    refresher.timer = timer  # type: ignore[attr-defined]  # polls only while this tab is shown
    return refresher
