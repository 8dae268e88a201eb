"""The Train tab's per-layer heat map: the picture (layer group x vector, colour = norm, values in
the cells and on hover) and its wiring (sent only when its step changes, hidden for a standard run,
fed by the page's poll)."""

from __future__ import annotations

import re

import gradio as gr
import torch

from embeddings.embedding import Embedding
from embeddings.formats import save_embedding
from jobs import events as ev
from jobs.view import JobView, fold
from ui.layer_heatmap import STOPS, colour, heatmap_html, short_name
from ui.train_tab import Sent, heatmap_labels, heatmap_update, live_update

GROUPS = ["down_blocks.0.attentions.0", "mid_block.attentions.0", "up_blocks.1.attentions.2"]


def _cells(page: str) -> list[tuple[str, str, str]]:
    """(background, hover text, shown value) of every cell."""
    return re.findall(r'<td class="ti-heat-cell" style="background:(rgb\([^)]*\));[^"]*" title="([^"]*)">([^<]*)</td>',
                      page)


def test_the_picture_is_layer_by_vector_coloured_by_norm_with_values():
    page = heatmap_html(7, {"clip_l": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.9]]}, GROUPS, "per block")
    cells = _cells(page)
    assert [v for _, _, v in cells] == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.9"]  # row by row
    assert cells[0][0] == "rgb({},{},{})".format(*STOPS[0]) and cells[-1][0] == "rgb({},{},{})".format(*STOPS[-1])
    assert cells[3][1] == "mid_block.attentions.0 · v1: norm 0.4"  # hover: the full group name
    rows = re.findall(r'<th class="ti-heat-row" title="([^"]*)">([^<]*)</th>', page)
    assert rows == [(GROUPS[0], "down 0.0"), (GROUPS[1], "mid 0"), (GROUPS[2], "up 1.2")]
    assert "<th>v0</th><th>v1</th>" in page and "step 7" in page and "per block" in page


def test_two_encoders_each_get_their_own_scale_and_unnamed_rows_are_numbered():
    page = heatmap_html(1, {"clip_l": [[1.0], [2.0]], "clip_g": [[10.0], [30.0]]}, ["only one name"])
    assert page.count('<table class="ti-heat"') == 2 and "clip_g: norm 10 – 30" in page
    cells = _cells(page)
    assert cells[0][0] == cells[2][0] and cells[1][0] == cells[3][0]  # each encoder's min and max
    assert "group 0" in page and "group 1" in page and "only one name" not in page


def test_equal_norms_are_one_colour_and_nothing_is_no_picture():
    cells = _cells(heatmap_html(0, {"clip_l": [[0.5, 0.5]] * 2}))
    assert {c[0] for c in cells} == {"rgb({},{},{})".format(*colour(0.5))}
    assert heatmap_html(3, {}) == "" and heatmap_html(3, {"clip_l": []}) == ""


def test_short_names():
    assert short_name("up_blocks.3.attentions.2.transformer_blocks.0.attn2") == "up 3.2.0.2"
    assert [short_name(n) for n in ("down", "mid", "up", "input_blocks.4")] == ["down", "mid", "up", "input_blocks.4"]


def _run_folder(tmp_path, groups=GROUPS) -> str:
    folder = tmp_path / "run"
    (folder / "original").mkdir(parents=True)
    vec = torch.ones(2, 32)
    emb = Embedding("pl", {"clip_l": vec}, kind="per-layer", parts={"clip_l": vec.repeat(len(groups), 1, 1)},
                    kind_info={"grouping": "block", "groups": list(groups), "standard": "mean"})
    save_embedding(emb, folder / "original" / "pl.safetensors")
    return str(folder)


def _norms(step: int, scale: float = 1.0) -> ev.Norms:
    return ev.Norms(step, {"clip_l": [0.5, 0.5]}, layers={"clip_l": [[0.1 * scale, 0.2], [0.3, 0.4], [0.5, 0.6]]})


def test_the_tab_sends_the_heatmap_when_its_step_changes_and_hides_it_for_standard_runs(tmp_path):
    folder = _run_folder(tmp_path)
    assert heatmap_labels(folder) == (tuple(GROUPS), "Vector norms per layer group (block)")
    view, sent = JobView(title="t"), Sent()
    assert heatmap_update(view, "a", sent) is None  # nothing yet: nothing sent
    fold(view, [ev.State("running"), ev.Files((folder,), ev.Files.RUN_FOLDER), _norms(1)])
    shown = heatmap_update(view, "a", sent)
    assert "step 1" in shown and ">mid 0<" in shown
    assert heatmap_update(view, "a", sent) is None  # same step: not sent again
    fold(view, [ev.Loss(2, 1.0, 0.01, 1.0), _norms(2, scale=5.0)])
    assert ">0.5<" in heatmap_update(view, "a", sent)
    assert heatmap_update(view, "a", Sent(heat=("a", 2))) is None

    standard = fold(JobView(title="s"), [ev.State("running"), ev.Norms(1, {"clip_l": [0.5]})])
    assert heatmap_update(standard, "b", sent) == ""  # the next run: emptied, so hidden
    assert heatmap_update(standard, "b", sent) is None
    assert heatmap_labels(str(tmp_path / "no-such-run")) == (None, "")


def test_the_page_poll_feeds_the_heatmap(data, tmp_path):
    from ui.app import build

    view = fold(JobView(title="t"), [ev.State("running"), ev.Files((_run_folder(tmp_path),), ev.Files.RUN_FOLDER),
                                     _norms(1)])
    assert ">mid 0<" in live_update(view, "a", Sent.from_text(""))["heat"]  # in the poll's answer
    demo = build(data)
    slots = [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "train_heatmap"]
    assert len(slots) == 1 and isinstance(slots[0], gr.HTML)
    assert 'id="train_heatmap_live"' in slots[0].value  # where the page's poller writes it
