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
