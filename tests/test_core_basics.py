"""Tokenizer, embedding creation and prompt splicing on the tiny model."""

import pytest
import torch

from embeddings.create import create_embedding, plan_embedding
from embeddings.embedding import MAX_VECTORS, Embedding, EmbeddingError
from embeddings.prompt import PromptEncoder, prompt_token_count


def test_clip_tokenizer_ids_match_published(tiny_model):
    tok = tiny_model.tokenizers[0]
    assert len(tok) == 49408
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_model_is_labelled_random(tiny_model):
    assert tiny_model.random_weights
    assert "random weights" in tiny_model.label
    assert tiny_model.family == "sd1"
    assert tiny_model.widths == {"clip_l": 32}
    assert len(tiny_model.short_hash) == 10
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())


def test_create_repeats_and_truncates(tiny_model):
    table = tiny_model.text_encoders[0].get_input_embeddings().weight
    e = create_embedding(tiny_model, "mycat", "cat toy", 4)
    v = e.vectors["clip_l"]
    assert v.shape == (4, 32)
    assert torch.equal(v[0], table[2368]) and torch.equal(v[1], table[2368])
    assert torch.equal(v[2], table[5988]) and torch.equal(v[3], table[5988])
    e2 = create_embedding(tiny_model, "mycat", "cat toy", 1)
    assert torch.equal(e2.vectors["clip_l"][0], table[2368])
    assert e.metadata["base_model_hash"] == tiny_model.short_hash
    z = create_embedding(tiny_model, "z", "", 3, init_mode="zeros")
    assert torch.count_nonzero(z.vectors["clip_l"]) == 0
    r = create_embedding(tiny_model, "r", "", 3, init_mode="random", seed=1)
    assert r.vectors["clip_l"].std() > 0


@pytest.mark.parametrize(
    "name,init,n,msg",
    [
        ("ok", "", 2, "init text is empty"),
        ("ok", "cat", 0, "at least 1"),
        ("ok", "cat", MAX_VECTORS + 1, "do not fit"),
        ("", "cat", 1, "empty"),
        ("bad/name", "cat", 1, "characters"),
        ("ok", "word " * 80, 1, "tokens long"),
    ],
)
def test_create_rejects_bad_input(tiny_model, name, init, n, msg):
    with pytest.raises(EmbeddingError, match=msg):
        plan_embedding(tiny_model.tokenizers[0], name, init, n)


def test_embedding_value_normalises_tensors():
    e = Embedding("x", {"clip_l": torch.ones(3, dtype=torch.float16, requires_grad=False)})
    assert e.vectors["clip_l"].dtype == torch.float32 and e.vectors["clip_l"].shape == (1, 3)
    with pytest.raises(EmbeddingError, match="disagree"):
        Embedding("x", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(3, 1280)})
    assert Embedding("x", {"clip_l": torch.ones(2, 768), "clip_g": torch.ones(2, 1280)}).family == "sdxl"


def test_prompt_splice_case_insensitive_and_gradient(tiny_model):
    e = create_embedding(tiny_model, "MyCat", "cat", 3)
    enc = PromptEncoder.for_embeddings(tiny_model, [e])
    tp = enc.tokenize(["a photo of mycat and MYCAT"])
    assert [(b, s, n, k) for b, s, n, k in tp.fixes] == [(0, 4, "MyCat", 3), (0, 8, "MyCat", 3)]
    assert tp.ids[0][0, 4:7].tolist() == [0, 0, 0]
    v = e.vectors["clip_l"].clone().requires_grad_(True)
    out = enc.encode(["a photo of mycat"], {"MyCat": {"clip_l": v}})
    out.hidden.pow(2).sum().backward()
    assert v.grad is not None and bool((v.grad.abs().sum(dim=1) > 0).all())
    # A different vector gives a different conditioning: the splice really is used.
    out2 = enc.encode(["a photo of mycat"], {"MyCat": {"clip_l": v.detach() + 1}})
    assert not torch.allclose(out.hidden.detach(), out2.hidden)
    assert prompt_token_count(tiny_model.tokenizers[0], "a photo of mycat", {"MyCat": 3}) == 6


def test_longest_name_wins(tiny_model):
    short = create_embedding(tiny_model, "foo", "cat", 1)
    long = create_embedding(tiny_model, "foo-bar", "dog", 2)
    enc = PromptEncoder.for_embeddings(tiny_model, [short, long])
    tp = enc.tokenize(["foo-bar and foo"])
    assert [f[2] for f in tp.fixes] == ["foo-bar", "foo"]
