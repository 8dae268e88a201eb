"""Previews are generated at the run's clip skip (what training conditions on), and a direct
embedding, whose vectors sit among one layer's outputs, trains and generates at its own clip skip
(or refuses another), on the tiny model."""

import numpy as np
import pytest
from PIL import Image

from embeddings.create import create_embedding
from embeddings.embedding import EmbeddingError
from embeddings.formats import load_embedding, save_embedding
from embeddings.kinds import DIRECT
from embeddings.prompt import conditioning_clip_skip, generate
from jobs.registry import Job
from training.errors import TrainingError
from training.trainer import train

pytest_plugins = ["train_fixtures"]

PROMPT = "a photo of flatcol"
PREVIEW = dict(preview_every=2, preview_steps=2, preview_prompts=[PROMPT], preview_seeds=[5], preview_cfg=3.0,
               preview_width=64, preview_height=64)


def _run(tiny_model, data, dataset, name, **extra):
    from train_fixtures import tiny_config

    job = Job(id=name, kind="train", title=name)
    out = train(tiny_config(data, dataset, max_steps=2, run_name=name, **PREVIEW, **extra), tiny_model, data, job)
    (preview,) = job.events("preview")
    return job, load_embedding(out["files"]["safetensors"]), Image.open(preview.data["path"])


def _direct(emb, tiny_model, **kw):
    return generate(tiny_model, PROMPT, [emb], seed=5, steps=2, cfg=3.0, width=64, height=64, **kw)


def _same(a, b) -> bool:
    return np.array_equal(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB")))


def test_a_clip_skip_2_run_previews_at_clip_skip_2(tiny_model, data, solid_dataset):
    save_embedding(create_embedding(tiny_model, "flatcol", "colour", 2), data.embeddings / "flatcol.safetensors")
    _job, final, preview = _run(tiny_model, data, solid_dataset, "skip2", clip_skip=2)
    assert final.step == 2 and "Clip skip: 2" in preview.text["parameters"]
    assert _same(preview, _direct(final, tiny_model, clip_skip=2))
    assert not _same(preview, _direct(final, tiny_model, clip_skip=1))  # the setting changes the image


def test_direct_trains_and_generates_at_its_own_clip_skip(tiny_model, data, solid_dataset):
    std = create_embedding(tiny_model, "flatcol", "colour", 2)
    save_embedding(DIRECT.make(std, tiny_model.unet, model=tiny_model), data.embeddings / "flatcol.safetensors")
    job, final, preview = _run(tiny_model, data, solid_dataset, "dskip2", clip_skip=2)
    # untrained and made at clip skip 1: restarted at the encoder's clip-skip-2 outputs
    assert "restarted" in " ".join(e.data.get("text", "") for e in job.events("message"))
    start = DIRECT.make(std, tiny_model.unet, model=tiny_model, clip_skip=2)
    assert final.kind == "direct" and final.kind_info["clip_skip"] == 2 and DIRECT.clip_skip(start) == 2
    assert DIRECT.at_clip_skip(load_embedding(data.runs / "dskip2" / "original" / "flatcol.safetensors"),
                               tiny_model, 2).equal(start)
    # generation without a clip skip takes the embedding's; the preview is that image
    assert _same(preview, _direct(final, tiny_model)) and _same(preview, _direct(final, tiny_model, clip_skip=2))
    with pytest.raises(EmbeddingError, match="trained at clip skip 2.*use clip skip 2"):
        _direct(final, tiny_model, clip_skip=1)
    # the Generate tab (and app.py generate, which calls the same generate) draws it at clip skip 2
    from ui.generate_tab import generate_images
    from ui.state import AppContext

    save_embedding(final, data.embeddings / "flatcol.safetensors")
    res = generate_images(AppContext(data=data), "tiny", PROMPT, "", 5, 2, 3.0, 64, 64, 1)
    assert "flatcol" in res.info and _same(res.images[0][0], preview)
    with pytest.raises(EmbeddingError, match="different clip skips"):
        conditioning_clip_skip([final, DIRECT.make(std.copy(name="other"), tiny_model.unet, model=tiny_model)])
    # a trained one cannot move to another clip skip
    from train_fixtures import tiny_config

    with pytest.raises(TrainingError, match="trained at clip skip 2"):
        train(tiny_config(data, solid_dataset, max_steps=4, run_name="back", clip_skip=1), tiny_model, data,
              Job(id="b", kind="train", title="b"))
