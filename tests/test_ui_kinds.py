"""Embedding kinds through the running app (gradio_client): Create offers the kinds, the library
shows them, Generate mixes styles; the old Create call (no kind) still makes a standard one."""

import pytest

pytest_plugins = ["tests.ui_fixtures"]
pytestmark = pytest.mark.timeout(600)


def test_create_per_layer_library_kind_and_style_mix(app):
    from embeddings.formats import load_embedding
    from ui.embeddings_tab import library_rows

    c = app.client()
    msg, name, _ = c.predict("tiny", "plobj", "cat", 2, "text", "safetensors", False, "per-layer", "stage",
                             api_name="/create_embedding")
    assert name == "plobj" and "3 layer groups" in msg
    emb = load_embedding(app.data.embeddings / "plobj.safetensors")
    assert emb.kind == "per-layer" and emb.kind_info["groups"] == ["down", "mid", "up"]
    with pytest.raises(Exception, match="safetensors"):
        c.predict("tiny", "plpt", "cat", 1, "text", "pt", False, "per-layer", "block", api_name="/create_embedding")
    c.predict("tiny", "plsty", "painting", 2, "text", "safetensors", False, api_name="/create_embedding")
    assert load_embedding(app.data.embeddings / "plsty.safetensors").kind == "standard"
    kinds = {r.name: r.kind for r in library_rows(app.ctx)}
    assert kinds["plobj"] == "per-layer (3)" and kinds["plsty"] == "standard"

    images, info = c.predict("tiny", "a photo of plobj", "", 1, 1, 7, 64, 64, "plobj", "plsty", "0,8",
                             api_name="/generate_style_mix")
    assert len(images) == 2 and "plobj" in info and "N = 0, 8" in info
    with pytest.raises(Exception, match="put plobj in the prompt"):
        c.predict("tiny", "a photo", "", 1, 1, 7, 64, 64, "plobj", "plsty", "", api_name="/generate_style_mix")


def test_create_starts_from_a_trained_standard_embedding(app):
    """Create's "start from a trained embedding": every anchor of a per-timestep embedding starts at
    the trained vectors (not the init text's), the plan says so, and other kinds or the same name are
    refused with the reason."""
    import torch

    from embeddings.create import create_embedding
    from embeddings.formats import load_embedding, save_embedding
    from embeddings.kinds import KINDS, PER_LAYER
    from ui.create_tab import describe_plan

    model = app.ctx.model("tiny")
    base = create_embedding(model, "trained", "dog", 3)
    base.vectors = {k: v + 0.25 for k, v in base.vectors.items()}
    base.step = 40
    save_embedding(base, app.data.embeddings / "trained.safetensors")
    save_embedding(PER_LAYER.make(create_embedding(model, "layered", "cat", 1), model.unet),
                   app.data.embeddings / "layered.safetensors")
    plan = describe_plan(app.ctx, "tiny", "ptdog", "cat", 1, "text", "trained")
    assert "Starts from **trained**: its 3 vector(s), trained to step 40" in plan
    assert "start from a standard one" in describe_plan(app.ctx, "tiny", "ptdog", "cat", 1, "text", "layered")

    options = {o.name: o.default for k in KINDS.values() for o in k.options}
    c = app.client()
    msg, name, _ = c.predict("tiny", "ptdog", "cat", 1, "text", "safetensors", False, "per-timestep",
                             *options.values(), "trained", api_name="/create_embedding")
    assert name == "ptdog" and "starting from trained (step 40)" in msg
    emb = load_embedding(app.data.embeddings / "ptdog.safetensors")
    assert emb.kind == "per-timestep" and emb.step == 0 and emb.metadata["started_from"] == "trained"
    assert emb.parts["clip_l"].shape == (2, 3, 32)
    assert all(torch.equal(a, base.vectors["clip_l"]) for a in emb.parts["clip_l"])
    with pytest.raises(Exception, match="start from a standard one"):
        c.predict("tiny", "fromlayers", "cat", 1, "text", "safetensors", False, "per-layer", *options.values(),
                  "layered", api_name="/create_embedding")
    with pytest.raises(Exception, match="replace the embedding it starts from"):
        c.predict("tiny", "trained", "cat", 1, "text", "safetensors", True, "per-layer", *options.values(),
                  "trained", api_name="/create_embedding")
    assert load_embedding(app.data.embeddings / "trained.safetensors").step == 40  # untouched
