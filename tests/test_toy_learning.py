"""Textual inversion on the toy model learns a concept the model was never captioned with.

The concept is a held-out shape-colour pair (`world.PLANTED`, a blue circle): the toy model
knows "blue" and "circle" but never saw them together. Eight images of it, captioned with
their background only, train a 2-vector embedding through the real trainer; the attribute
reader then checks generations: the trained embedding must show the concept in most seeds,
its init embedding ("shape": any shape, any colour) in few.
"""

from __future__ import annotations

from embeddings.create import create_embedding
from embeddings.formats import load_embedding, save_embedding
from jobs.registry import Job
from models.toy.planted import INIT_TEXT, TEMPLATE, THRESHOLD, concept_rate
from training.config import TrainConfig
from training.trainer import train

pytest_plugins = ["toy_fixtures"]

TI_STEPS = 300


def planted_config(data, dataset, **overrides) -> TrainConfig:
    values = dict(
        embedding="planted", dataset=str(dataset), model="toy", resolution=64, bucket_step=8, min_bucket=32,
        max_bucket=128, lr="0.05", lr_kind="constant", max_steps=TI_STEPS, batch_size=4, save_every=0,
        preview_every=0, not_learning_steps=0, template=TEMPLATE, seed=5,
    )
    values.update(overrides)
    return TrainConfig.from_dict(values)


def test_textual_inversion_learns_a_planted_concept(toy_model, toy_reader, data, planted_dataset):
    init = create_embedding(toy_model, "planted", INIT_TEXT, 2)
    save_embedding(init, data.embeddings / "planted.safetensors")
    result = train(planted_config(data, planted_dataset), toy_model, data, Job(id="t", kind="train", title="t"))
    trained = load_embedding(result["embedding"])
    assert trained.step == TI_STEPS
    before = concept_rate(toy_model, toy_reader, init)
    after = concept_rate(toy_model, toy_reader, trained)
    assert before <= 0.2, f"init embedding already shows the concept in {before:.0%} of seeds"
    assert after >= THRESHOLD, f"trained embedding shows the concept in only {after:.0%} of seeds (init {before:.0%})"
