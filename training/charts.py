"""Line charts as PNG images (Pillow only): the score chart of a run and the comparison of runs.

One drawing for every place that shows them: the Evaluate page, `app.py evaluate --chart` and
the README. Each panel has its own y range (CLIP scores and losses live on different scales);
the x axis is the absolute step, shared by all panels. A dashed vertical line marks a step
(the suggested one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image, ImageDraw, ImageFont

COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))
Points = Sequence[tuple[float, float]]


@dataclass
class Panel:
    title: str
    series: dict[str, Points] = field(default_factory=dict)


def draw_panels(panels: Sequence[Panel], *, width: int = 760, panel_height: int = 220,
                mark_step: int | None = None, mark_label: str = "") -> Image.Image:
    """The panels stacked, each with its title, y labels (min, max), legend and points."""
    panels = [p for p in panels if any(len(v) for v in p.series.values())] or [Panel("nothing to show yet")]
    font = ImageFont.load_default(size=12)
    img = Image.new("RGB", (width, panel_height * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    xs = [x for p in panels for pts in p.series.values() for x, _ in pts]
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    left, right, top, bottom = 76, 16, 26, 28
    for k, panel in enumerate(panels):
        oy = k * panel_height
        box = (left, oy + top, width - right, oy + panel_height - bottom)
        draw.rectangle(box, outline=(180, 180, 180))
        draw.text((left, oy + 6), panel.title, fill=(0, 0, 0), font=font)
        ys = [y for pts in panel.series.values() for _, y in pts]
        if not ys:
            continue
        y0, y1 = min(ys), max(ys)
        if y1 == y0:
            y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
        pad = 0.05 * (y1 - y0)
        y0, y1 = y0 - pad, y1 + pad

        def to_px(x: float, y: float, box=box, y0=y0, y1=y1) -> tuple[float, float]:
            return (box[0] + (x - x0) / (x1 - x0) * (box[2] - box[0]),
                    box[3] - (y - y0) / (y1 - y0) * (box[3] - box[1]))

        for value, py in ((y1, box[1]), (y0, box[3] - 12)):
            draw.text((4, py), f"{value:.4g}"[:11], fill=(90, 90, 90), font=font)
        draw.text((box[0], box[3] + 4), f"step {x0:g}", fill=(90, 90, 90), font=font)
        end = f"step {x1:g}"
        draw.text((box[2] - draw.textlength(end, font=font), box[3] + 4), end, fill=(90, 90, 90), font=font)
        if mark_step is not None and x0 <= mark_step <= x1:
            mx, _ = to_px(mark_step, y0)
            for yy in range(box[1], box[3], 8):
                draw.line([(mx, yy), (mx, min(yy + 4, box[3]))], fill=(120, 120, 120))
            if k == 0 and mark_label:
                draw.text((mx + 4, box[1] + 2), mark_label, fill=(90, 90, 90), font=font)
        lx = box[0] + 140
        for i, (name, pts) in enumerate(panel.series.items()):
            colour = COLOURS[i % len(COLOURS)]
            pts = sorted(pts)
            if len(pts) > 1:
                draw.line([to_px(x, y) for x, y in pts], fill=colour, width=2)
            for x, y in pts if len(pts) <= 60 else ():
                px, py = to_px(x, y)
                draw.ellipse((px - 2.5, py - 2.5, px + 2.5, py + 2.5), fill=colour)
            draw.line([(lx, oy + 12), (lx + 16, oy + 12)], fill=colour, width=3)
            draw.text((lx + 20, oy + 6), name, fill=(0, 0, 0), font=font)
            lx += 28 + int(draw.textlength(name, font=font))
    return img


def score_chart(scores, *, width: int = 760) -> Image.Image:
    """A run's likeness, editability (with the untrained level and the share the suggestion must
    keep) and eval loss against step, one panel each, the suggested step marked.
    `scores`: training.scores.RunScores."""
    trained = scores.trained
    edit = Panel("editability", {"editability": [(s.step, s.editability) for s in trained]})
    base = scores.baseline
    if base is not None and trained:
        ends = (trained[0].step, trained[-1].step)
        edit.series["untrained"] = [(x, base.editability) for x in ends]
        edit.series[f"{scores.threshold:.0%} of it"] = [(x, scores.threshold * base.editability) for x in ends]
    panels = [Panel("likeness", {"likeness": [(s.step, s.likeness) for s in trained]}), edit,
              Panel("eval loss", {"eval loss": scores.eval_loss})]
    step = scores.suggestion.step
    return draw_panels(panels, width=width, panel_height=170, mark_step=step,
                       mark_label=f"suggested: step {step}" if step else "")


def comparison_chart(comparison, *, width: int = 760) -> Image.Image:
    """One panel per metric, one line per run. `comparison`: training.compare.Comparison."""
    titles = {"loss": "loss (smoothed)", "eval_loss": "eval loss", "likeness": "likeness", "editability": "editability"}
    panels = [Panel(title, {r.name: r.series.get(metric, []) for r in comparison.runs})
              for metric, title in titles.items()]
    return draw_panels(panels, width=width, panel_height=180)
