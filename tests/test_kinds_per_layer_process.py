"""A per-layer embedding through `python app.py train` as a subprocess: SIGKILL mid-run leaves
per-layer files and a bundle that resume; two CPU processes train it data-parallel."""


import pytest

from embeddings.create import create_embedding
from embeddings.formats import load_embedding, save_embedding
from embeddings.kinds import PER_LAYER
from tests.kinds_fixtures import check_sigkill_then_resume
from training.run_folder import RunFolder

pytest_plugins = ["train_fixtures"]


@pytest.fixture
def per_layer_embedding(tiny_model, data):
    emb = PER_LAYER.make(create_embedding(tiny_model, "flatcol", "colour", 2), tiny_model.unet, grouping="stage")
    return save_embedding(emb, data.embeddings / "flatcol.safetensors")


def test_sigkill_mid_run_leaves_per_layer_files_that_resume(data, tmp_path, solid_dataset, per_layer_embedding):
    state = check_sigkill_then_resume(data, tmp_path, solid_dataset, "per-layer", density_weight=0.01)
    assert state.step >= 2 and state.vectors["clip_l"].shape == (3, 2, 32)


@pytest.mark.slow
def test_two_cpu_processes_train_per_layer(data, tmp_path, solid_dataset, per_layer_embedding):
    from test_cli_train import _config, _launch_two

    cfg = _config(tmp_path, solid_dataset, max_steps=2, run_name="ddp", save_every=0)
    proc = _launch_two(data, cfg, "--config", str(cfg), port=29547)
    assert "x 2 processes" in proc.stdout
    final = load_embedding(RunFolder(data.runs / "ddp").final / "flatcol.safetensors")
    assert final.kind == "per-layer" and final.step == 2 and final.is_finite()
    parts = final.parts["clip_l"]
    assert (parts - parts.mean(0)).flatten(1).norm(dim=1).gt(0).all()
