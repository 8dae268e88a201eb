"""SDXL interop: diffusers' `StableDiffusionXLPipeline.load_textual_inversion` installs our SDXL files
exactly (the diffusers SDXL recipe: clip_l into text_encoder/tokenizer, clip_g into
text_encoder_2/tokenizer_2, same token), and a trained tiny-sdxl embedding survives every format.

Each interop test loads a fresh tiny-sdxl pipeline: loading an embedding grows its tokenizers.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from embeddings.formats import FORMATS, load_embedding, load_embedding_pair, save_embedding
from embeddings.formats.diffusers_format import pair_paths
from models.load import load_base_model
from tests.formats_fixtures import make_embedding

TOKEN = "xlcat"
N = 3


@pytest.fixture
def xl_pipe(data):
    return load_base_model("tiny-sdxl", data).pipeline()


def installed_rows(tokenizer, text_encoder, token: str, n: int) -> torch.Tensor:
    names = [token] + [f"{token}_{i}" for i in range(1, n)]
    ids = tokenizer.convert_tokens_to_ids(names)
    assert tokenizer.unk_token_id not in ids, f"diffusers did not add all of {names}"
    return text_encoder.get_input_embeddings().weight[ids].detach()


def xl_embedding(pipe):
    widths = {"clip_l": pipe.text_encoder.get_input_embeddings().weight.shape[1],
              "clip_g": pipe.text_encoder_2.get_input_embeddings().weight.shape[1]}
    return make_embedding(TOKEN, widths, n=N)


def assert_installed(pipe, emb, before: tuple[int, int]) -> None:
    assert (len(pipe.tokenizer), len(pipe.tokenizer_2)) == (before[0] + N, before[1] + N)
    assert torch.equal(installed_rows(pipe.tokenizer, pipe.text_encoder, TOKEN, N), emb.vectors["clip_l"])
    assert torch.equal(installed_rows(pipe.tokenizer_2, pipe.text_encoder_2, TOKEN, N), emb.vectors["clip_g"])
    expanded = " ".join([TOKEN] + [f"{TOKEN}_{i}" for i in range(1, N)])
    for tok in (pipe.tokenizer, pipe.tokenizer_2):
        assert pipe.maybe_convert_prompt(f"a photo of {TOKEN}", tok) == f"a photo of {expanded}"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_diffusers_sdxl_recipe_loads_our_two_key_files(tmp_path, xl_pipe, suffix):
    """Our SDXL .safetensors / .pt hold {"clip_l", "clip_g"}: the keys the diffusers docs' recipe reads."""
    emb = xl_embedding(xl_pipe)
    path = save_embedding(emb, tmp_path / f"{TOKEN}{suffix}")
    if suffix == ".safetensors":
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"clip_l", "clip_g"}
    before = (len(xl_pipe.tokenizer), len(xl_pipe.tokenizer_2))
    xl_pipe.load_textual_inversion(state["clip_g"], token=TOKEN, text_encoder=xl_pipe.text_encoder_2,
                                   tokenizer=xl_pipe.tokenizer_2)
    xl_pipe.load_textual_inversion(state["clip_l"], token=TOKEN, text_encoder=xl_pipe.text_encoder,
                                   tokenizer=xl_pipe.tokenizer)
    assert_installed(xl_pipe, emb, before)


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_diffusers_loads_our_sdxl_pair_files_by_path(tmp_path, xl_pipe, suffix):
    """Our diffusers export is diffusers' own SDXL training output: X (clip_l) and X_2 (clip_g)."""
    emb = xl_embedding(xl_pipe)
    first = save_embedding(emb, tmp_path / f"{TOKEN}{suffix}", "diffusers")
    path_l, path_g = pair_paths(first)
    assert path_g.is_file()
    before = (len(xl_pipe.tokenizer), len(xl_pipe.tokenizer_2))
    xl_pipe.load_textual_inversion(str(path_l), token=TOKEN, text_encoder=xl_pipe.text_encoder,
                                   tokenizer=xl_pipe.tokenizer)
    xl_pipe.load_textual_inversion(str(path_g), token=TOKEN, text_encoder=xl_pipe.text_encoder_2,
                                   tokenizer=xl_pipe.tokenizer_2)
    assert_installed(xl_pipe, emb, before)


def test_trained_tiny_sdxl_round_trips_every_format(data, tmp_path):
    """Train 2 steps on tiny-sdxl, export each format, read it back: the same vectors (bit-exact)."""
    from train_fixtures import make_dataset, tiny_config

    from embeddings.create import create_embedding
    from jobs.registry import Job
    from training.trainer import train

    model = load_base_model("tiny-sdxl", data)
    start = create_embedding(model, "flatcol", "colour", 2)
    save_embedding(start, data.embeddings / "flatcol.safetensors")
    cfg = tiny_config(data, make_dataset(tmp_path / "xl", n=2), model="tiny-sdxl", max_steps=2)
    trained = load_embedding(train(cfg, model, data, Job(id="t", kind="train", title="t"))["embedding"])
    assert trained.step == 2 and set(trained.vectors) == {"clip_l", "clip_g"}
    for key in ("clip_l", "clip_g"):
        assert not torch.equal(trained.vectors[key], start.vectors[key])

    for fmt in FORMATS:
        written = save_embedding(trained, tmp_path / "out" / f"flatcol-{fmt}", fmt)
        if fmt == "diffusers":
            # two one-encoder files; each holds its encoder's rows under the embedding's token
            path_l, path_g = pair_paths(written)
            halves = [load_embedding(path_l), load_embedding(path_g)]
            assert [h.name for h in halves] == ["flatcol-diffusers", "flatcol-diffusers_2"]
            # named explicitly, the pair reads back as one SDXL embedding at tiny widths too
            pair = load_embedding_pair(path_l, path_g)
            got = pair.vectors
            assert set(got) == {"clip_l", "clip_g"} and pair.widths == {"clip_l": 32, "clip_g": 64}
        else:
            back = load_embedding(written)
            got = back.vectors
            assert set(got) == {"clip_l", "clip_g"}, fmt
            if fmt != "pt":  # A1111's SDXL .pt holds the two tensors and nothing else
                assert back.step == 2, fmt
        for key in ("clip_l", "clip_g"):
            assert torch.equal(got[key], trained.vectors[key]), (fmt, key)
