"""SD 2.x v-prediction on the built-in `tiny-sd2v`: the loss target is the velocity, a run learns,
and its embedding files keep the CLIP-H key at toy width through every format."""

import pytest
import torch
import torch.nn.functional as F

from embeddings.families import CLIP_H, fitting_models
from embeddings.formats import FORMATS, load_embedding, save_embedding
from jobs.registry import Job
from training.trainer import train

pytest_plugins = ["train_fixtures"]


@pytest.fixture(scope="module")
def sd2v(shared_data):
    from models.load import load_base_model

    return load_base_model("tiny-sd2v", shared_data)


def test_tiny_sd2v_is_an_sd2_v_prediction_model(sd2v):
    assert sd2v.family == "sd2" and sd2v.prediction_type == "v_prediction"
    assert sd2v.widths == {CLIP_H: 48} and sd2v.encoder_keys == (CLIP_H,)
    assert sd2v.tokenizers[0].pad_token == "!"  # OpenCLIP padding, as SD 2.x
    assert sd2v.unet.config.use_linear_projection and sd2v.unet.config.cross_attention_dim == 48
    assert fitting_models({CLIP_H: 48}) == ["tiny-sd2v"]


def test_loss_target_is_the_velocity(sd2v):
    """The loss the trainer minimises on a v-prediction model is MSE against diffusers' get_velocity."""
    from diffusers import DDPMScheduler

    from embeddings.create import create_embedding
    from embeddings.prompt import PromptEncoder
    from training.loss import denoise_loss

    scheduler = DDPMScheduler.from_config(sd2v.scheduler.config)  # what the trainer builds
    assert scheduler.config.prediction_type == "v_prediction"
    emb = create_embedding(sd2v, "velo", "colour", 1)
    cond = PromptEncoder(sd2v, {"velo": 1}).encode(["a photo of velo", "velo"], {"velo": emb.vectors})
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, 8, 8), generator=gen)
    noise = torch.randn((2, 4, 8, 8), generator=gen)
    timesteps = torch.tensor([10, 900])
    with torch.no_grad():
        loss = denoise_loss(sd2v, scheduler, latents, noise, timesteps, cond)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        pred = sd2v.unet(noisy, timesteps, cond.hidden, return_dict=False)[0]
    velocity = scheduler.get_velocity(latents, noise, timesteps)
    assert torch.allclose(loss, F.mse_loss(pred, velocity), rtol=1e-5, atol=1e-7)
    assert not torch.allclose(loss, F.mse_loss(pred, noise), rtol=1e-2)  # not the epsilon target


def test_learns_and_round_trips_every_format(sd2v, data, tmp_path):
    from train_fixtures import make_dataset, tiny_config

    from embeddings.create import create_embedding

    start = create_embedding(sd2v, "flatcol", "colour", 2)
    assert set(start.vectors) == {CLIP_H}
    save_embedding(start, data.embeddings / "flatcol.safetensors")
    cfg = tiny_config(data, make_dataset(tmp_path / "v"), model="tiny-sd2v", lr="0.05", lr_kind="constant",
                      max_steps=24, batch_size=2, eval_every=8)
    job = Job(id="t", kind="train", title="t")
    out = train(cfg, sd2v, data, job)
    evals = [e.data["loss"] for e in job.events("eval")]
    assert [e.data["step"] for e in job.events("eval")] == [0, 8, 16, 24]
    assert evals[-1] < evals[0] - 0.003, evals  # deterministic evaluation: the drop is real
    trained = load_embedding(out["embedding"])
    assert trained.step == 24 and set(trained.vectors) == {CLIP_H} and trained.fits(sd2v.widths)
    assert not torch.equal(trained.vectors[CLIP_H], start.vectors[CLIP_H])

    for fmt in FORMATS:  # a lone 48-wide tensor reads back as CLIP-H, so the file fits tiny-sd2v again
        back = load_embedding(save_embedding(trained, tmp_path / "out" / f"flatcol-{fmt}", fmt))
        assert set(back.vectors) == {CLIP_H}, fmt
        assert torch.equal(back.vectors[CLIP_H], trained.vectors[CLIP_H]), fmt
        assert back.fits(sd2v.widths), fmt
