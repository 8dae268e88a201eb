"""The scores mean something: on the toy world, with the CLIP trained on it.

A random CLIP (test_scores.py) can only show plumbing. Here the scores must move the right way:
images of the planted concept score a higher likeness than unrelated toy images, the edit text
that describes an image scores higher than one that does not, and over a real learning run
likeness rises from the untrained embedding to the last snapshot while the suggested step is one
where the attribute reader sees the concept. Each test fails if the score ignores its input.

Skipped, with the reason, when the toy weights are not in models/toy/weights (they are built by
`python -m models.toy.build`).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from models.clip import find_clip, load_clip
from models.toy import world
from models.toy.planted import TEMPLATE
from models.toy.weights import WEIGHTS_DIR, ToyWeightsError, verify
from training.config import TrainConfig
from training.scores import ScoreSettings, likeness_of

pytest_plugins = ["train_fixtures", "toy_fixtures"]

CLIP_WEIGHTS = WEIGHTS_DIR / "clip.safetensors"
needs_toy_clip = pytest.mark.skipif(not CLIP_WEIGHTS.is_file(),
                                    reason=f"toy CLIP weights absent ({CLIP_WEIGHTS}); build: python -m models.toy.build")


def _toy_ready() -> str:
    try:
        verify()
        return ""
    except (ToyWeightsError, KeyError, OSError) as e:
        return str(e)


TOY_MISSING = _toy_ready()
needs_toy_model = pytest.mark.skipif(bool(TOY_MISSING), reason=f"toy model weights absent or incomplete: {TOY_MISSING}")


def planted_images(seed: int, n: int = 8):
    shape, colour = world.PLANTED
    rng = random.Random(seed)
    return [world.render(world.sample_scene(rng, shape=shape, colour=colour, held_out=None)) for _ in range(n)]


@needs_toy_clip
def test_concept_images_score_higher_likeness_than_unrelated_ones(data):
    clip = load_clip("toy", data)
    assert find_clip("", data, base_model="toy").kind == "toy"  # the toy model's default CLIP
    reference = planted_images(1)
    concept = planted_images(2)  # other purple stars: other places, sizes, backgrounds
    shape, colour = world.PLANTED
    unrelated = [world.render(s) for s in world.scenes(3, 8) if (s.shape, s.colour) != (shape, colour)]
    same_shape = [world.render(s) for s in world.scenes(4, 8, shape=shape) if s.colour != colour]
    like_concept = likeness_of(clip, concept, reference)
    assert like_concept > likeness_of(clip, same_shape, reference) + 0.05
    assert like_concept > likeness_of(clip, unrelated, reference) + 0.2


@needs_toy_clip
def test_editability_text_side_follows_the_image(data):
    clip = load_clip("toy", data)
    settings = ScoreSettings(("[name]",), ("a [name] on a green background",), "purple star", (0,), 1, 1.0, 64, 64,
                             "default")
    text = clip.encode_texts([settings.edit_text(settings.edit_prompts[0])])
    assert settings.edit_text(settings.edit_prompts[0]) == "a purple star on a green background"
    fits = clip.encode_images([world.render(world.Scene("star", "purple", "green", 32, 32, 19))])
    other_bg = clip.encode_images([world.render(world.Scene("star", "purple", "red", 32, 32, 19))])
    other_shape = clip.encode_images([world.render(world.Scene("circle", "purple", "green", 32, 32, 19))])
    assert float(fits @ text.T) > float(other_bg @ text.T) + 0.1
    assert float(fits @ text.T) > float(other_shape @ text.T) + 0.1


@needs_toy_model
def test_likeness_rises_over_the_learning_run_and_the_suggested_step_shows_the_concept(
        toy_model, toy_reader, data, planted_dataset):
    from train_fixtures import make_embedding

    from embeddings.formats import load_embedding
    from embeddings.prompt import generate
    from training.outputs import find_snapshot
    from training.run_folder import RunFolder
    from training.scores import evaluate_run
    from training.trainer import train

    make_embedding(toy_model, data, name="planted", vectors=2)
    cfg = TrainConfig.from_dict(dict(
        embedding="planted", dataset=str(planted_dataset), model="toy", resolution=64, bucket_step=8, min_bucket=32,
        max_bucket=128, lr="0.02", lr_kind="constant", max_steps=120, batch_size=4, save_every=40, preview_every=0,
        not_learning_steps=0, template=TEMPLATE, seed=5,
        score_every=40, clip_model="toy", score_prompts=["a [name] on a orange background"],
        edit_prompts=["a [name] on a green background", "a [name] on a white background"], class_word=world.PLANTED[0],
        score_seeds=[0, 1], score_steps=12, preview_cfg=4.0))
    run = RunFolder(Path(train(cfg, toy_model, data)["run_dir"]))
    rs = evaluate_run(run, data, model=toy_model)  # the steps scored in training come from the cache
    assert all(s.cached for s in rs.scores)
    base, trained = rs.baseline, rs.trained
    assert base is not None and [s.step for s in trained] == [40, 80, 120]
    assert trained[-1].likeness > base.likeness + 0.05, (base, trained)
    step = rs.suggestion.step
    assert step in (40, 80, 120), rs.suggestion.words
    emb = load_embedding(find_snapshot(run, step))
    shape, colour = world.PLANTED
    seen = 0
    for seed, background in zip(range(100, 106), ("green", "orange", "white", "red", "yellow", "green"), strict=True):
        image = generate(toy_model, f"a {emb.name} on a {background} background", [emb], seed=seed, steps=20, cfg=4.0)
        seen += toy_reader.read(image).shows(shape=shape, colour=colour)
    assert seen >= 4, f"the suggested step {step} shows the concept in only {seen}/6 images ({rs.suggestion.words})"
