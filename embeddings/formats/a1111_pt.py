"""Pickle containers: A1111 `.pt`, diffusers `.bin`; read safely, written so A1111 accepts them.

Reading: only `torch.load(..., map_location="cpu", weights_only=True)`. Its unpickler builds
tensors and plain containers and refuses every other global, so a crafted file (`__reduce__`
calling `os.system`) is refused before anything in it runs. The one extra class allowed is
`torch.nn.ParameterDict`, which the original textual-inversion repo stored under
`string_to_param`; unpickling it only restores attributes (no code runs), and we unwrap its
`_parameters` like A1111 does.

Writing: the A1111 layout exactly:
`{"string_to_token": {"*": 265}, "string_to_param": {"*": float32 CPU [n, D]}, "name", "step",
"sd_checkpoint", "sd_checkpoint_name"}`, nothing else (A1111 ignores extra keys, but tools that
compare key sets do not; our richer metadata lives in `.safetensors`).

SDXL `.pt` is `{"clip_l": [n, 768], "clip_g": [n, 1280]}` and nothing else: A1111 reads it
through its SDXL branch, which calls `.detach()` on *every* value, so a name or step key would
break it. That file therefore carries no name or step (the file name is the name anyway).

The stream is torch's legacy (non-zip) serialization. A1111's safe loader checks the entry
names inside zip files against a fixed list (`data.pkl`, `data/N`, `version`, `byteorder`,
`.data/serialization_id`); torch >= 2.x adds `.format_version` and `.storage_alignment`, which
that list refuses ("bad file inside ..."). The legacy stream has no entry names and only uses
globals on A1111's allow-list (`_rebuild_tensor_v2`, `FloatStorage`, `OrderedDict`), and
diffusers, ComfyUI and kohya all read it with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingFileError
from embeddings.families import CLIP_G, CLIP_L
from embeddings.formats.layouts import A1111_TOKEN_ID, check_writable, classify, single_tensor
from workspace.atomic import atomic_write_bytes


def read_pickle(path: Path) -> Any:
    """`torch.load` with weights_only; every refusal becomes an EmbeddingFileError naming the file."""
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([torch.nn.ParameterDict]):
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notes on plain pickles
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in first or "Unsupported" in str(e) or "global" in str(e):
            detail = _refused_global(str(e))
            raise EmbeddingFileError(
                path, f"refused to load: the file contains code or objects that are not tensors{detail} "
                      "(unsafe pickle; nothing in it was run)"
            ) from None
        raise EmbeddingFileError(path, f"not a readable torch file ({first})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError, AttributeError, KeyError,
            IndexError, UnicodeDecodeError, OverflowError, MemoryError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbeddingFileError(path, f"not a readable torch file ({msg[:200]})") from None


def _refused_global(message: str) -> str:
    """Pull the refused name (e.g. `posix.system`) out of torch's long weights-only message."""
    for marker in ("Unsupported global: GLOBAL ", "GLOBAL "):
        i = message.find(marker)
        if i >= 0:
            rest = message[i + len(marker):].split()[0].rstrip(".,:")
            return f" ({rest})"
    return ""


def load_pickle_embedding(path: Path) -> Embedding:
    data = read_pickle(path)
    return classify(path, data, container="pickle", name=path.stem)


def a1111_dict(emb: Embedding) -> dict[str, Any]:
    """The exact A1111 `.pt` payload (also the payload of PNG image embeddings)."""
    meta = emb.metadata
    return {
        "string_to_token": {"*": A1111_TOKEN_ID},
        "string_to_param": {"*": single_tensor(emb)},
        "name": emb.name,
        "step": int(emb.step),
        "sd_checkpoint": _opt_str(meta.get("base_model_hash")),
        "sd_checkpoint_name": _opt_str(meta.get("base_model")),
    }


def sdxl_dict(emb: Embedding) -> dict[str, torch.Tensor]:
    return {k: emb.vectors[k].detach().to("cpu", torch.float32).clone().contiguous() for k in (CLIP_L, CLIP_G)}


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def pickle_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def save_pt(emb: Embedding, path: Path) -> Path:
    check_writable(emb)
    payload = sdxl_dict(emb) if set(emb.vectors) == {CLIP_L, CLIP_G} else a1111_dict(emb)
    return atomic_write_bytes(path, pickle_bytes(payload))
