"""The other tabs' fixes, through their functions (no browser): Create says which init tokens are
dropped or repeated, the Embeddings tab shows a skipped row calmly and says which models a file
fits, Generate lists only the names a prompt can use, Preprocess joins caption parts cleanly and writes
the toy example dataset."""

from __future__ import annotations

import pytest

from embeddings.formats import save_embedding
from tests.formats_fixtures import make_embedding
from ui.state import AppContext


def test_create_plan_names_the_dropped_and_repeated_tokens(data):
    from embeddings.create import plan_embedding

    tok = AppContext(data=data).tokenizer()
    lines = plan_embedding(tok, "x1", "a photo of a cat", 4).describe()
    assert any(line.startswith("not used (only 4 vector(s)): cat") for line in lines)
    lines = plan_embedding(tok, "x1", "cat toy", 5).describe()
    assert "used more than once: cat</w> x3, toy</w> x2" in lines


def test_embeddings_tab_a_skipped_row_is_shown_calmly_and_fits_are_named(data):
    from ui.embeddings_tab import inspect, library_rows

    save_embedding(make_embedding("wide", {"clip_l": 768}, extremes=False), data.embeddings / "wide.safetensors")
    save_embedding(make_embedding("small", {"clip_l": 32}, extremes=False), data.embeddings / "small.safetensors")
    (data.embeddings / "broken.pt").write_bytes(b"not a torch file")
    ctx = AppContext(data=data)
    rows = {r.name: r for r in library_rows(ctx)}
    assert rows["wide"].fits == "sd1" and rows["small"].fits == "tiny" and rows["broken"].fits == "–"
    norms, summary, settings = inspect(ctx, "broken")  # no error: the reason, in the summary
    assert norms.empty and settings == {} and "skipped:" in summary and "broken.pt" in summary
    _, summary, _ = inspect(ctx, "wide")
    assert "fits: sd1" in summary


def test_generate_lists_only_the_names_a_prompt_can_use(data):
    from ui.generate_tab import library_names

    save_embedding(make_embedding("fitting", {"clip_l": 32}, extremes=False), data.embeddings / "fitting.safetensors")
    save_embedding(make_embedding("other", {"clip_l": 768}, extremes=False), data.embeddings / "other.safetensors")
    sick = make_embedding("sick", {"clip_l": 32}, extremes=False)
    sick.vectors["clip_l"][0, 0] = float("nan")
    save_embedding(sick, data.embeddings / "sick.safetensors")
    (data.embeddings / "broken.pt").write_bytes(b"junk")
    ctx = AppContext(data=data)
    assert library_names(ctx, "tiny") == "**Usable in prompts:** `fitting`"
    assert library_names(ctx, "sd1") == "**Usable in prompts:** `other`"


def test_caption_parts_join_cleanly():
    from preprocessing.captions import compose_caption

    assert compose_caption("a cat", None, "ignore", "walkcat, ", "") == "walkcat, a cat"
    assert compose_caption("walkcat, a cat", None, "ignore", "walkcat, ", "") == "walkcat, a cat"  # not stacked
    assert compose_caption("a cat,", None, "ignore", "walkcat,", ", best") == "walkcat, a cat, best"
    assert compose_caption("", None, "ignore", "walkcat, ", "") == "walkcat"


def test_a_failed_job_bar_is_red():
    from ui.train_tab import progress_html

    assert "#dc2626" in progress_html(1.0, failed=True) and "#dc2626" not in progress_html(1.0)


def test_toy_example_dataset_is_the_planted_concept_and_never_overwrites(data):
    import gradio as gr

    from models.toy import world
    from models.toy.planted import TEMPLATE
    from ui.preprocess_tab import TOY_EXAMPLE, toy_example

    ctx = AppContext(data=data)
    message, name = toy_example(ctx, "")
    assert name == TOY_EXAMPLE and TEMPLATE in message
    folder = data.datasets / name
    assert len(list(folder.glob("*.png"))) == 8
    assert {p.read_text() for p in folder.glob("*.txt")} <= {f"{c} background" for c in world.COLOUR_NAMES}
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(gr.Error, match="already has files"):
        toy_example(ctx, name)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert toy_example(ctx, "mine")[1] == "mine"
    with pytest.raises(gr.Error, match="plain folder name"):
        toy_example(ctx, "../out")
