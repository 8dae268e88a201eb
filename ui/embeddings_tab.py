"""Embeddings tab: the library as a table, inspect one, export it, rename, delete, add files.

The table says *why* a file is skipped (wrong width, not an embedding, broken file) because
"embedding skipped" with no reason is what users of other tools complain about most.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from embeddings.embedding import EmbeddingError
from embeddings.families import fitting_models
from embeddings.formats import EMBEDDING_SUFFIXES, export_name, save_embedding
from embeddings.kinds import kind_of
from embeddings.library import LibraryEntry
from ui.common import Refresh, fail, user_errors
from ui.state import AppContext

log = logging.getLogger(__name__)

COLUMNS = ["name", "vectors", "fits", "step", "base model", "file", "status", "why skipped", "kind"]
EXPORT_FORMATS = [
    ("safetensors (A1111 / ComfyUI / diffusers)", "safetensors"),
    (".pt (A1111 classic)", "pt"),
    ("diffusers .bin ({token: tensor})", "diffusers"),
    ("PNG with the embedding inside", "png"),
]


@dataclass
class Row:
    name: str
    kind: str  # "standard", or e.g. "per-layer (16)" with its layer-group count
    vectors: int | None
    fits: str
    step: int | None
    base_model: str
    file: str
    status: str
    reason: str

    def as_list(self) -> list[Any]:
        return [self.name, self.vectors, self.fits, self.step, self.base_model, self.file, self.status, self.reason,
                self.kind]


def library_rows(ctx: AppContext) -> list[Row]:
    """One row per file in the embeddings folder, usable or not."""
    rows = []
    for e in ctx.library(None).entries():
        meta = e.metadata or {}
        rows.append(Row(
            name=e.name,
            kind=(e.kind + (f" ({e.layer_groups})" if e.layer_groups else "")) if e.ok else "",  # a skipped file has none
            vectors=e.num_vectors,
            fits=fits_text(e),
            step=e.step,
            base_model=str(meta.get("base_model") or meta.get("sd_checkpoint_name") or "–"),
            file=_display(ctx, e.path),
            status=e.status,
            reason=e.reason or "; ".join(e.warnings or []),
        ))
    return rows


def fits_text(entry: LibraryEntry) -> str:
    """Which models a file can be used with ("sd1", "tiny"...), from its widths (embeddings.families):
    "ok" alone does not say that a 768-wide file is useless on a 32-wide model."""
    emb = entry.embedding
    if emb is None:
        return "–"
    return ", ".join(fitting_models(emb.widths)) or "no known model"


def _display(ctx: AppContext, path: Path) -> str:
    try:
        return str(Path(path).relative_to(ctx.data.embeddings))
    except ValueError:
        return Path(path).name


def table(ctx: AppContext) -> pd.DataFrame:
    return pd.DataFrame([r.as_list() for r in library_rows(ctx)], columns=COLUMNS)


def _entry(ctx: AppContext, name: str) -> LibraryEntry:
    if not (name or "").strip():
        raise fail("Pick an embedding first (click its row or choose it in the list)")
    try:
        return ctx.library(None).resolve(name)
    except EmbeddingError as e:
        raise fail(str(e)) from e


def _embedding(ctx: AppContext, name: str):
    entry = _entry(ctx, name)
    if not entry.ok or entry.embedding is None:
        raise fail(f"{name}: cannot be used ({entry.reason or 'unreadable'})")
    return entry.embedding, Path(entry.path)


def inspect(ctx: AppContext, name: str) -> tuple[pd.DataFrame, str, dict[str, Any]]:
    """(per-vector norms, markdown summary, the settings it was trained with). A skipped file
    is not an error: the summary says why it is skipped."""
    entry = _entry(ctx, name)
    if not entry.ok or entry.embedding is None:
        return (pd.DataFrame(columns=["encoder", "vector", "norm"]),
                f"### {entry.name}\n- file: `{Path(entry.path).name}`\n- skipped: {entry.reason or 'unreadable'}", {})
    emb, path = entry.embedding, Path(entry.path)
    norms = emb.norms()
    rows = [[k, f"v{i}", round(v, 5)] for k, vals in norms.items() for i, v in enumerate(vals)]
    df = pd.DataFrame(rows, columns=["encoder", "vector", "norm"])
    meta = {k: v for k, v in emb.metadata.items() if k != "settings"}
    widths = ", ".join(f"{k} {w}" for k, w in emb.widths.items())
    md = "\n".join([
        f"### {emb.name}",
        f"- file: `{path.name}`",
        f"- vectors: {emb.num_vectors} · widths: {widths} · fits: {fits_text(entry)} · step: {emb.step}",
        *_kind_lines(emb),
        f"- finite: {'yes' if emb.is_finite() else '**NO (NaN/inf values)**'}",
        "```json\n" + json.dumps(meta, indent=2, default=str, ensure_ascii=False)[:4000] + "\n```",
    ])
    settings = emb.metadata.get("settings") or {}
    return df, md, settings if isinstance(settings, dict) else {"settings": settings}


def _kind_lines(emb) -> list[str]:
    """The kind in words, from the kind itself (a standard embedding adds nothing)."""
    kind = kind_of(emb)
    details = kind.describe(emb)
    if "experimental" in details:  # direct conditioning: say what it cannot do
        groups = f"{len(details['groups'])} {details['grouping']} group(s); " if "groups" in details else ""
        return [f"- kind: **{kind.label}**: {groups}{details['experimental']}"]
    if "anchors" in details:  # per-timestep
        groups = f", each one set per {details['grouping']} group ({len(details['groups'])})" if "groups" in details else ""
        return [f"- kind: **{kind.label}**: {len(details['anchors'])} anchor sets at t = "
                f"{', '.join(f'{t:g}' for t in details['anchors'])}{groups}; other tools get the standard part (the "
                f"blend at t = {details['standard_at']:g}); .pt / diffusers exports hold only that part"]
    if "groups" not in details:
        return []
    std = details.get("standard_part", "mean")
    return [f"- kind: **{kind.label}**: {len(details['groups'])} {details.get('grouping', '')} group(s); "
            f"other tools get the standard part ({'the mean over groups' if std == 'mean' else std}); "
            ".pt / diffusers exports hold only that part"]


def export(ctx: AppContext, name: str, fmt: str) -> str:
    """Write the embedding in `fmt` under data/cache/exports and return the file to download."""
    emb, _ = _embedding(ctx, name)
    out_dir = ctx.data.exports / emb.name
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / export_name(emb, fmt)
    return str(save_embedding(emb, target, fmt))


def rename(ctx: AppContext, name: str, new_name: str) -> str:
    new_name = (new_name or "").strip()
    if not new_name:
        raise fail("Type the new name first")
    _entry(ctx, name)
    ctx.library(None).rename(name, new_name)
    return f"Renamed **{name}** to **{new_name}**."


def delete(ctx: AppContext, name: str, confirm: bool) -> str:
    if not confirm:
        raise fail("Tick 'Yes, delete it' to confirm; deleting cannot be undone")
    _entry(ctx, name)
    ctx.library(None).delete(name)
    return f"Deleted **{name}**."


def add_files(ctx: AppContext, paths: list[str] | None) -> str:
    """Copy uploaded embedding files into the library; a bad file is reported and the rest go on."""
    if not paths:
        raise fail(f"Choose one or more embedding files ({' '.join(EMBEDDING_SUFFIXES)}) first")
    lib = ctx.library(None)
    added, problems = [], []
    for p in paths:
        src = Path(p)
        if src.suffix.lower() not in EMBEDDING_SUFFIXES:
            problems.append(f"{src.name}: not an embedding file type")
            continue
        try:
            entry = lib.add_file(src)
            added.append(entry.name + ("" if entry.ok else f" (added, but {entry.reason})"))
        except (ValueError, OSError) as e:
            problems.append(str(e))
    lines = []
    if added:
        lines.append("Added: " + ", ".join(f"**{a}**" for a in added))
    if problems:
        lines.append("Not added: " + "; ".join(problems))
    return "\n\n".join(lines)


def names(ctx: AppContext) -> list[str]:
    return [r.name for r in library_rows(ctx)]


def build(ctx: AppContext) -> Refresh:
    gr.Markdown("Every file in the embeddings folder. Skipped files say why.")
    lib_table = gr.Dataframe(headers=COLUMNS, interactive=False, wrap=True, elem_id="emb_table",
                             label="Library (click a row to pick it)", elem_classes=["ti-rows"],
                             column_widths=["13%", "6%", "9%", "5%", "10%", "15%", "7%", "25%", "10%"])
    refresh_btn = gr.Button("Refresh", size="sm", elem_id="emb_refresh")
    with gr.Row():
        with gr.Column(scale=2):
            pick = gr.Dropdown(label="Embedding", choices=[], allow_custom_value=False, elem_id="emb_pick")
            summary = gr.Markdown(elem_id="emb_summary")
            norms = gr.BarPlot(x="vector", y="norm", color="encoder", title="Norm of each vector",
                               elem_id="emb_norms", height=220)
            with gr.Accordion("Trained with these settings", open=False):
                settings = gr.JSON(elem_id="emb_settings")
        with gr.Column(scale=2):
            with gr.Group():
                fmt = gr.Dropdown(EXPORT_FORMATS, value="safetensors", label="Export as", elem_id="emb_fmt")
                export_btn = gr.Button("Export", elem_id="emb_export")
                download = gr.File(label="Download", interactive=False, elem_id="emb_download")
            with gr.Group():
                new_name = gr.Textbox(label="New name", elem_id="emb_new_name")
                rename_btn = gr.Button("Rename", elem_id="emb_rename")
            rename_md = gr.Markdown(elem_id="emb_rename_msg")
            with gr.Group():
                confirm = gr.Checkbox(False, label="Yes, delete it", elem_id="emb_confirm")
                delete_btn = gr.Button("Delete", variant="stop", elem_id="emb_delete")
            delete_md = gr.Markdown(elem_id="emb_delete_msg")
            with gr.Group():
                upload = gr.File(label="Add embedding files", file_count="multiple",
                                 file_types=list(EMBEDDING_SUFFIXES), elem_id="emb_upload")
                add_btn = gr.Button("Add to library", elem_id="emb_add")
            add_md = gr.Markdown(elem_id="emb_status")

    def refresh(current: str | None = None):
        df = table(ctx)
        choices = list(df["name"])
        value = current if current in choices else (choices[0] if choices else None)
        return df, gr.Dropdown(choices=choices, value=value)

    refresh_btn.click(refresh, pick, [lib_table, pick], api_name="library", show_progress="hidden")

    @user_errors("Inspect")
    def inspect_fn(name):
        if not name:
            return pd.DataFrame(columns=["encoder", "vector", "norm"]), "", {}
        return inspect(ctx, name)

    pick.change(inspect_fn, pick, [norms, summary, settings], api_name="inspect")

    def select_row(evt: gr.SelectData, df: pd.DataFrame):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        return gr.Dropdown(value=str(df.iloc[row]["name"]))

    lib_table.select(select_row, lib_table, pick, api_visibility="private")

    @user_errors("Export")
    def export_fn(name, f):
        path = export(ctx, name, f)
        emb, _ = _embedding(ctx, name)
        note = kind_of(emb).export_note(emb, f)
        if note:
            gr.Info(f"{emb.name}: {note}")  # e.g. a per-layer embedding exported to .pt keeps its standard part
        return path

    export_btn.click(export_fn, [pick, fmt], download, api_name="export")

    @user_errors("Rename")
    def rename_fn(name, new):
        msg = rename(ctx, name, new)
        df, dd = refresh(new.strip())
        return msg, df, dd, ""

    rename_btn.click(rename_fn, [pick, new_name], [rename_md, lib_table, pick, new_name], api_name="rename")

    @user_errors("Delete")
    def delete_fn(name, ok):
        msg = delete(ctx, name, ok)
        df, dd = refresh(None)
        return msg, df, dd, False

    delete_btn.click(delete_fn, [pick, confirm], [delete_md, lib_table, pick, confirm], api_name="delete")

    @user_errors("Add")
    def add_fn(files):
        msg = add_files(ctx, files)
        df, dd = refresh(None)
        return msg, df, dd, None

    add_btn.click(add_fn, upload, [add_md, lib_table, pick, upload], api_name="add_embeddings")
    return Refresh(refresh, [pick], [lib_table, pick])
