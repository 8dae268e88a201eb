"""The per-layer norm heat map of the Train tab, as HTML: one row per layer group, one column per vector.

A per-layer embedding has groups x vectors learned vectors per text encoder; a line per vector
(the norm chart) would be dozens of lines. The heat map shows the latest norms at a glance: the
colour is the norm (one scale per encoder, dark = short, bright = long), the value is written in
the cell and, with the group's full module path, in its hover text. Rows run in the UNet's call
order (down, mid, up), so the coarse, low-resolution layers sit in the middle.

Pure string building, no Gradio: the tab sends the result to a `gr.HTML` only when the step of
the grid changed, and tests read it directly. Its CSS (`.ti-heat*`) is in ui/app.py with the page's.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

# viridis at five stops: a sequential scale that reads in grey too
STOPS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
_STAGES = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}


def colour(t: float) -> tuple[int, int, int]:
    """The scale's colour at t in 0..1 (clamped; NaN is the middle)."""
    t = 0.5 if t != t else min(1.0, max(0.0, t))
    pos = t * (len(STOPS) - 1)
    i = min(int(pos), len(STOPS) - 2)
    f = pos - i
    a, b = STOPS[i], STOPS[i + 1]
    return tuple(round(a[c] + (b[c] - a[c]) * f) for c in range(3))  # type: ignore[return-value]


def short_name(group: str) -> str:
    """A row label: "down_blocks.1.attentions.0" -> "down 1.0", "mid_block.attentions.0.
    transformer_blocks.0.attn2" -> "mid 0.0"; "down" / "mid" / "up" and other names stay."""
    head, _, rest = group.partition(".")
    if head not in _STAGES or not rest:
        return group
    numbers = ".".join(re.findall(r"\d+", rest))
    return f"{_STAGES[head]} {numbers}".strip()


def heatmap_html(step: int, grids: Mapping[str, Sequence[Sequence[float]]],
                 groups: Sequence[str] | None = None, title: str = "") -> str:
    """The heat map of `grids` ({encoder: rows of norms}) at `step`; `groups` names the rows
    (ignored unless there is one name per row: rows are then "group 0", "group 1", ...)."""
    tables = []
    for encoder, grid in grids.items():
        rows = [list(r) for r in grid]
        if not rows:
            continue
        names = list(groups) if groups is not None and len(groups) == len(rows) else [f"group {i}" for i in range(len(rows))]
        values = [v for r in rows for v in r if v == v]
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        span = hi - lo
        head = "".join(f"<th>v{i}</th>" for i in range(max(len(r) for r in rows)))
        body = []
        for name, row in zip(names, rows, strict=True):
            cells = []
            for i, v in enumerate(row):
                r, g, b = colour((v - lo) / span if span > 0 else 0.5)
                ink = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"
                tip = html.escape(f"{name} · v{i}: norm {v:.4g}", quote=True)
                cells.append(f'<td class="ti-heat-cell" style="background:rgb({r},{g},{b});color:{ink}" '
                             f'title="{tip}">{v:.3g}</td>')
            body.append(f'<tr><th class="ti-heat-row" title="{html.escape(name, quote=True)}">'
                        f"{html.escape(short_name(name))}</th>{''.join(cells)}</tr>")
        caption = (f"{html.escape(encoder)}: " if len(grids) > 1 else "") + f"norm {lo:.3g} – {hi:.3g}"
        tables.append(f'<table class="ti-heat" data-encoder="{html.escape(encoder, quote=True)}">'
                      f"<caption>{caption}</caption><thead><tr><th></th>{head}</tr></thead>"
                      f"<tbody>{''.join(body)}</tbody></table>")
    if not tables:
        return ""
    heading = f"<b>{html.escape(title or 'Vector norms per layer group')}</b> · step {step}"
    legend = ('<span class="ti-heat-legend" style="background:linear-gradient(to right,'
              + ",".join(f"rgb{c}" for c in STOPS) + ')"></span> short → long')
    return (f'<div class="ti-heatmap" data-step="{step}"><div>{heading} · {legend}</div>'
            f'<div class="ti-heat-tables">{"".join(tables)}</div></div>')

