"""Interop: diffusers' own `load_textual_inversion` loads our files and installs exactly our vectors.

Each test loads a fresh tiny model (its own text encoder and tokenizer), because loading an
embedding adds tokens and grows the embedding table.
"""

from __future__ import annotations

import pytest
import torch

from embeddings.formats import load_embedding, save_embedding
from models.load import load_base_model
from tests.formats_fixtures import make_embedding


@pytest.fixture
def fresh_pipe(data):
    return load_base_model("tiny", data).pipeline()


def installed_rows(pipe, token: str, n: int) -> torch.Tensor:
    """The rows diffusers wrote for `token` (it names extra vectors token_1 ... token_{n-1})."""
    names = [token] + [f"{token}_{i}" for i in range(1, n)]
    ids = pipe.tokenizer.convert_tokens_to_ids(names)
    assert pipe.tokenizer.unk_token_id not in ids, f"diffusers did not add all of {names}"
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach()


@pytest.mark.parametrize(
    "fmt,filename,token_arg",
    [
        ("pt", "mycat.pt", None),  # A1111 .pt: diffusers takes the token from the stored name
        ("safetensors", "mycat.safetensors", "mycat"),  # kohya key "emb_params": token must be given
        ("diffusers", "mycat.bin", None),  # {token: tensor}
        ("diffusers", "mycat.safetensors", None),
    ],
)
def test_diffusers_loads_our_files(tmp_path, fresh_pipe, fmt, filename, token_arg):
    emb = make_embedding("mycat", {"clip_l": 32}, n=3)
    path = save_embedding(emb, tmp_path / filename, fmt)
    before = len(fresh_pipe.tokenizer)
    fresh_pipe.load_textual_inversion(str(path), token=token_arg)
    assert len(fresh_pipe.tokenizer) == before + 3
    assert torch.equal(installed_rows(fresh_pipe, "mycat", 3), emb.vectors["clip_l"])
    # And the pipeline really uses them: the prompt is rewritten to the added tokens.
    assert fresh_pipe.maybe_convert_prompt("a photo of mycat", fresh_pipe.tokenizer) == \
        "a photo of mycat mycat_1 mycat_2"


def test_diffusers_single_vector_and_our_reader_agree(tmp_path, fresh_pipe):
    emb = make_embedding("<toy>", {"clip_l": 32}, n=1)
    path = save_embedding(emb, tmp_path / "toy.bin", "diffusers")
    fresh_pipe.load_textual_inversion(str(path))
    assert torch.equal(installed_rows(fresh_pipe, "<toy>", 1), emb.vectors["clip_l"])
    back = load_embedding(path)
    assert back.metadata["token"] == "<toy>" and back.equal(emb)
