"""Prompts longer than 75 tokens: encoded in 75-token chunks and concatenated (A1111 / ComfyUI),
BREAK starts a new chunk, an embedding never straddles two chunks, and nothing is cut."""

from __future__ import annotations

import torch

from embeddings.create import create_embedding
from embeddings.names import NameMatcher
from embeddings.prompt import PromptEncoder, embedding_vectors, generate, split_chunks


def test_split_rules(tiny_model):
    tok = tiny_model.tokenizers[0]
    counts = {"mycat": 4}
    matcher = NameMatcher(tok, counts)
    rows, fixes = split_chunks(tok, matcher, counts, "a photo of mycat BREAK on a sofa")
    assert [len(r) for r in rows] == [7, 3] and fixes == [(0, 3, "mycat", 4)]
    rows, fixes = split_chunks(tok, matcher, counts, "x " * 73 + "mycat")  # 73 + 4 > 75: mycat moves on whole
    assert [len(r) for r in rows] == [73, 4] and fixes == [(1, 0, "mycat", 4)]
    words = ", ".join(f"red{i}" for i in range(30))  # commas every few tokens
    rows, _ = split_chunks(tok, matcher, counts, words)
    comma = tok.convert_tokens_to_ids(",</w>")
    assert len(rows) == 2 and rows[0][-1] == comma and sum(map(len, rows)) == len(tok(words)["input_ids"]) - 2
    assert split_chunks(tok, matcher, counts, "lowercase break stays a word")[0][0][-3] != 0  # not the keyword


def test_long_prompts_are_chunked_not_cut(tiny_model):
    emb = create_embedding(tiny_model, "mycat", "cat", 2)
    enc = PromptEncoder.for_embeddings(tiny_model, [emb])
    vecs = embedding_vectors([emb])
    first, second = "a photo of mycat", "sitting on a red sofa"
    joined = enc.encode([f"{first} BREAK {second}"], vecs).hidden
    assert joined.shape[1] == 154
    torch.testing.assert_close(joined[:, :77], enc.encode([first], vecs).hidden)
    torch.testing.assert_close(joined[:, 77:], enc.encode([second], vecs).hidden)
    long = " ".join(["photo"] * 80)
    a = enc.encode([long + " cat"], vecs).hidden
    b = enc.encode([long + " dog"], vecs).hidden
    assert a.shape[1] == 154 and not torch.equal(a, b)  # the 81st word still counts
    batch = enc.encode([long, first], vecs).hidden  # a batch pads the short prompt with an empty chunk
    assert batch.shape == (2, 154, joined.shape[2])
    torch.testing.assert_close(batch[1:, :77], enc.encode([first], vecs).hidden)


def test_generate_with_a_long_prompt_and_a_short_negative(tiny_model):
    emb = create_embedding(tiny_model, "mycat", "cat", 2)
    image = generate(tiny_model, "mycat, " + ", ".join(["studio light"] * 40), [emb], negative_prompt="blurry",
                     steps=1, width=64, height=64)
    assert image.size == (64, 64)
