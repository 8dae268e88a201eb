"""The real CLIP BPE tokenizer, built offline from the vocabulary open_clip_torch ships.

All SD families share OpenAI's CLIP vocabulary; only the pad token differs per text encoder
(`embeddings.families.ENCODERS`; "!" is id 0). Writing vocab.json + merges.txt once lets transformers'
`CLIPTokenizer` load it like any hub tokenizer folder. transformers is imported only to load one
(it takes seconds; writing the files does not need it).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

from embeddings.families import EOS_PAD
from workspace.atomic import atomic_write_text

CLIP_VOCAB_SIZE = 49408
BOS, EOS = 49406, 49407


def _bpe_gz_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed; it provides the CLIP BPE vocabulary")
    path = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise RuntimeError(f"CLIP BPE vocabulary not found at {path}")
    return path


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_tokenizer(folder: Path, pad_token: str = EOS_PAD) -> Path:
    """Write a CLIPTokenizer folder (vocab.json, merges.txt, configs). Idempotent."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "vocab.json").is_file() or not (folder / "merges.txt").is_file():
        with gzip.open(_bpe_gz_path()) as f:
            lines = f.read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
        vocab = list(_bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        atomic_write_text(folder / "vocab.json", json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    atomic_write_text(
        folder / "special_tokens_map.json",
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2),
    )
    return folder


def load_clip_tokenizer(folder: Path):
    """Load a CLIPTokenizer and refuse the silent 2-token fallback transformers 5 can give."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tok) < CLIP_VOCAB_SIZE:
        raise RuntimeError(f"tokenizer in {folder} has {len(tok)} tokens, expected {CLIP_VOCAB_SIZE}")
    return tok
