"""Snapshot grids: one labelled PNG with a column per step and a row per seed (or per prompt).

The answer A1111 users get from the X/Y plot script over snapshot names, in one call: every cell
is generated exactly as a single image would be (`training.previews.preview_image`, the same path
as previews and Generate) and pasted unscaled, so a cell has the same pixels as that image made
on its own. Each snapshot is used under the run's embedding name (its `-000500` suffix dropped),
so one prompt, with `[name]` or the embedding's name in it, fits every column. Works for every
embedding kind: the snapshot file carries its kind and `generate` asks the kind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from embeddings.embedding import Embedding
from embeddings.formats import load_embedding
from jobs import events
from jobs.registry import Job
from models.cache import get_model
from training.config import TrainConfig
from training.device import choose_device, place
from training.errors import TrainingError
from training.outputs import find_snapshot
from training.previews import PreviewSpec, preview_image
from training.run_folder import RunFolder
from training.scores import base_name
from training.templates import render
from workspace.atomic import atomic_path
from workspace.datadir import DataDir

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
GAP = 2  # pixels between cells
MAX_ROW_LABEL = 48  # characters of a prompt shown as a row label


@dataclass(frozen=True)
class GridSpec:
    """What to draw. `seeds` with one prompt: a snapshot × seed grid; `prompts` (two or more)
    with the first seed: a snapshot × prompt grid."""

    steps: tuple[int, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    negative: str = ""
    sample_steps: int = 20
    cfg: float = 7.0
    width: int = 512
    height: int = 512
    scheduler: str = "default"
    clip_skip: int = 1

    @property
    def by_prompt(self) -> bool:
        return len(self.prompts) > 1

    def rows(self) -> list[tuple[str, int, str]]:
        """(prompt, seed, label) per row."""
        if self.by_prompt:
            return [(p, self.seeds[0], _short(p)) for p in self.prompts]
        return [(self.prompts[0], s, f"seed {s}") for s in self.seeds]

    @classmethod
    def for_run(cls, config: TrainConfig, steps: Sequence[int], seeds: Sequence[int] = (),
                prompts: Sequence[str] = (), **changes) -> GridSpec:
        """The run's preview sampler, CFG, size and clip skip; its first preview (else likeness) prompt."""
        prompts = tuple(p for p in prompts if p.strip()) or (
            (config.preview_prompts or config.score_prompts or ["[name]"])[0],)
        values = dict(steps=tuple(steps), prompts=prompts, seeds=tuple(seeds) or tuple(config.preview_seeds) or (0,),
                      negative=config.preview_negative, sample_steps=config.preview_steps, cfg=config.preview_cfg,
                      width=config.preview_width or config.resolution, height=config.preview_height or config.resolution,
                      scheduler=config.preview_scheduler, clip_skip=config.clip_skip)
        values.update({k: v for k, v in changes.items() if v is not None})
        return cls(**values)


@dataclass
class Grid:
    image: Image.Image
    spec: GridSpec
    cells: list[list[Image.Image]] = field(default_factory=list)  # [row][column]
    boxes: list[list[tuple[int, int, int, int]]] = field(default_factory=list)  # where each cell is pasted
    path: Path | None = None


def grid_embeddings(run: RunFolder, steps: Sequence[int]) -> list[Embedding]:
    """The snapshot of each step, under the run's embedding name."""
    out = []
    for step in steps:
        emb = load_embedding(find_snapshot(run, step))
        out.append(emb.copy(name=base_name(emb)))
    return out


def render_grid(model, embeddings: Sequence[Embedding], spec: GridSpec, *, device: torch.device,
                dtype: torch.dtype, on_cell: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> Grid:
    """Generate every cell (row by row) and lay them out with labels. `on_cell(done, total)`
    reports progress."""
    rows = spec.rows()
    total = len(rows) * len(embeddings)
    cells: list[list[Image.Image]] = []
    for r, (prompt, seed, _) in enumerate(rows):
        line = []
        for c, emb in enumerate(embeddings):
            cell_spec = PreviewSpec(render(prompt, emb.name, ""), spec.negative, seed, spec.sample_steps, spec.cfg,
                                    spec.width, spec.height, spec.scheduler, spec.clip_skip)
            line.append(preview_image(model, emb, cell_spec, device=device, dtype=dtype, should_stop=should_stop))
            if on_cell is not None:
                on_cell(r * len(embeddings) + c + 1, total)
        cells.append(line)
    image, boxes = layout(cells, [f"step {s}" for s in spec.steps], [label for *_, label in rows])
    return Grid(image, spec, cells, boxes)


def layout(cells: Sequence[Sequence[Image.Image]], column_labels: Sequence[str],
           row_labels: Sequence[str]) -> tuple[Image.Image, list[list[tuple[int, int, int, int]]]]:
    """Cells pasted unscaled on a white sheet, column labels above, row labels on the left.
    Returns the sheet and each cell's box (left, top, right, bottom)."""
    w = max(im.width for line in cells for im in line)
    h = max(im.height for line in cells for im in line)
    font = ImageFont.load_default(size=max(10, min(24, w // 8)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        box = probe.textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    pad = 6
    left = max(size(t)[0] for t in row_labels) + 2 * pad
    top = max(size(t)[1] for t in column_labels) + 2 * pad
    cols = max(len(line) for line in cells)
    sheet = Image.new("RGB", (left + cols * (w + GAP), top + len(cells) * (h + GAP)), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for c, text in enumerate(column_labels):
        tw, _ = size(text)
        draw.text((left + c * (w + GAP) + max(0, (w - tw) // 2), pad), text, fill=INK, font=font)
    boxes = []
    for r, line in enumerate(cells):
        y = top + r * (h + GAP)
        draw.text((pad, y + max(0, (h - size(row_labels[r])[1]) // 2)), row_labels[r], fill=INK, font=font)
        row_boxes = []
        for c, im in enumerate(line):
            x = left + c * (w + GAP)
            sheet.paste(im.convert("RGB"), (x, y))
            row_boxes.append((x, y, x + im.width, y + im.height))
        boxes.append(row_boxes)
    return sheet, boxes


def save_grid(run: RunFolder, grid: Grid, model_name: str = "") -> Path:
    """`grids/<steps>-<seeds|prompts>-<hash>.png` in the run folder, with what made it in the PNG's
    `parameters` text chunk. The same grid asked again lands on the same file."""
    s = grid.spec
    what = json.dumps([s.steps, s.prompts, s.seeds, s.negative, s.sample_steps, s.cfg, s.width, s.height,
                       s.scheduler, model_name])
    tag = hashlib.sha1(what.encode()).hexdigest()[:8]
    rows = "prompts" if s.by_prompt else "seeds-" + "_".join(str(x) for x in s.seeds[:6])
    name = f"steps-{'_'.join(str(x) for x in s.steps[:8])}-{rows}-{tag}.png"
    path = run.grids / name
    info = PngInfo()
    info.add_text("parameters", f"grid of {run.name}: steps {list(s.steps)}, "
                                f"{'prompts ' + str(list(s.prompts)) if s.by_prompt else 'prompt ' + repr(s.prompts[0])}, "
                                f"seeds {list(s.seeds)}\nNegative prompt: {s.negative}\nSteps: {s.sample_steps}, "
                                f"Sampler: {s.scheduler}, CFG scale: {s.cfg}, Size: {s.width}x{s.height}, "
                                f"Model: {model_name}")
    with atomic_path(path) as tmp:
        grid.image.save(tmp, format="PNG", pnginfo=info)
    grid.path = path
    return path


def grid_for_run(run: RunFolder, data_dir: DataDir, steps: Sequence[int], *, seeds: Sequence[int] = (),
                 prompts: Sequence[str] = (), model=None, job: Job | None = None, **changes) -> Grid:
    """A grid of `run`'s snapshots at `steps`, saved in its grids/ folder: what the page and
    `app.py grid` call. Steps without a snapshot are an error naming the steps there are."""
    config = TrainConfig.load(run.settings_path)
    if not steps:
        raise TrainingError("a grid needs at least one step")
    embeddings = grid_embeddings(run, steps)  # before loading a model: a wrong step fails fast
    spec = GridSpec.for_run(config, steps, seeds, prompts, **changes)
    plan = choose_device(config.mixed_precision)
    if model is None:
        if job is not None:
            job.progress(0, 1, phase="loading")
        model = get_model(config.model, data_dir)
    place(model, plan)
    on_cell = (lambda done, total: job.progress(done, total, phase="grid")) if job is not None else None
    grid = render_grid(model, embeddings, spec, device=plan.device, dtype=plan.weight_dtype, on_cell=on_cell,
                       should_stop=(lambda: job.stop_requested) if job is not None else None)
    save_grid(run, grid, model.name)
    if job is not None:
        job.emit(events.Files(paths=[grid.path], what="grid"))
    return grid


def _short(text: str) -> str:
    return text if len(text) <= MAX_ROW_LABEL else text[:MAX_ROW_LABEL - 1] + "…"
