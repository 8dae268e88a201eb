"""Turn a loaded dict of tensors into an `Embedding`, following A1111's detection order.

Every container (pickle `.pt`/`.bin`, `.safetensors`, the JSON inside PNG/WebP images) yields a
dict; what the dict *means* is decided here, in one place, so a file reads the same whatever it
came in. The order is A1111's (`create_embedding_from_data`), so a file that
A1111 accepts is read the same way here, and one it refuses is refused with a clearer reason:

1. `string_to_param` present: A1111 / original-TI layout; exactly one term.
   (Our SDXL image extension puts `clip_l` and `clip_g` there instead of `*`; see `png_embed`.)
2. both `clip_l` and `clip_g`: SDXL (kohya / A1111 layout); every value must be a tensor.
3. exactly one tensor: a diffusers concept (`{"<token>": T}`) or kohya's `{"emb_params": T}`.
4. anything else: "unknown layout", naming the keys found.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.families import CLIP_G, CLIP_L, single_encoder_key

A1111_TOKEN_ID = 265  # CLIP id of "*</w>"; A1111 and the original TI repo always write it
KOHYA_KEY = "emb_params"

# Keys that describe a file that was read, not the embedding itself: never written back.
TRANSIENT_KEYS = ("format", "sha256", "stored_name", "token", "source_dtype", "pair_file")


def describe_keys(data: Mapping[str, Any], limit: int = 8) -> str:
    keys = [str(k) for k in data]
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


def check_tensor(path: Path, label: str, value: Any) -> torch.Tensor:
    """A detached float32 CPU [n, width] tensor, or a file error saying what is wrong with it."""
    if not isinstance(value, torch.Tensor):
        raise EmbeddingFileError(path, f"{label} is a {type(value).__name__}, not a tensor")
    if not (value.dtype.is_floating_point):
        raise EmbeddingFileError(path, f"{label} has dtype {str(value.dtype).replace('torch.', '')}, "
                                       "not floating point")
    t = value.detach().to("cpu", torch.float32)
    if t.dim() == 1:
        t = t.unsqueeze(0)
    if t.dim() != 2:
        raise EmbeddingFileError(path, f"{label} has shape {tuple(value.shape)}; expected [vectors, width]")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise EmbeddingFileError(path, f"{label} has shape {tuple(value.shape)}: no vectors")
    return t.clone().contiguous()


def _source_dtype(values: list[Any]) -> str | None:
    for v in values:
        if isinstance(v, torch.Tensor) and v.dtype != torch.float32:
            return str(v.dtype).replace("torch.", "")
    return None


def classify(path: Path, data: Any, *, container: str, name: str) -> Embedding:
    """Build an Embedding from a loaded object.

    `container` is "pickle", "safetensors" or "image" (it decides the `format` label);
    `name` is the default name (the file stem; images pass the name stored inside).
    """
    path = Path(path)
    if isinstance(data, torch.Tensor):
        data = {"": data}  # a bare tensor: treat like a one-key concept file
    if not isinstance(data, Mapping):
        raise EmbeddingFileError(path, f"unknown layout: a {type(data).__name__}, not a dict of tensors")
    if not data:
        raise EmbeddingFileError(path, "unknown layout: the file holds no tensors")
    meta: dict[str, Any] = {}
    step = 0
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # old files: torch.nn.ParameterDict
        if not isinstance(params, Mapping):
            raise EmbeddingFileError(path, f"string_to_param is a {type(params).__name__}, not a dict")
        keys = list(params)
        if set(keys) == {CLIP_L, CLIP_G}:  # our SDXL image extension
            vectors = {k: check_tensor(path, f"string_to_param[{k!r}]", params[k]) for k in (CLIP_L, CLIP_G)}
        elif len(keys) != 1:
            raise EmbeddingFileError(path, f"several terms in one file ({len(keys)}: {describe_keys(params)}); "
                                           "an embedding file must hold one")
        else:
            t = check_tensor(path, f"string_to_param[{keys[0]!r}]", params[keys[0]])
            vectors = {single_encoder_key(t.shape[1]): t}
        fmt = {"pickle": "a1111-pt", "safetensors": "safetensors", "image": "a1111"}[container]
        step = _as_int(data.get("step"))
        if data.get("sd_checkpoint") is not None:
            meta["base_model_hash"] = str(data["sd_checkpoint"])
        if data.get("sd_checkpoint_name") is not None:
            meta["base_model"] = str(data["sd_checkpoint_name"])
        stored = data.get("name")
        if isinstance(stored, str) and stored and stored != name:
            meta["stored_name"] = stored
        dtype = _source_dtype(list(params.values()))
    elif CLIP_L in data and CLIP_G in data:
        extra = [k for k, v in data.items() if not isinstance(v, torch.Tensor)]
        if extra:
            raise EmbeddingFileError(path, f"SDXL layout with non-tensor entries {describe_keys(dict.fromkeys(extra))}")
        others = [k for k in data if k not in (CLIP_L, CLIP_G)]
        if others:
            raise EmbeddingFileError(path, f"SDXL layout with extra tensors {describe_keys(dict.fromkeys(others))}")
        vectors = {k: check_tensor(path, k, data[k]) for k in (CLIP_L, CLIP_G)}
        fmt = {"pickle": "sdxl-pt", "safetensors": "safetensors", "image": "sdxl"}[container]
        dtype = _source_dtype(list(data.values()))
    else:
        tensors = [k for k, v in data.items() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise EmbeddingFileError(path, f"unknown layout: keys {describe_keys(data)}, none is a tensor "
                                           "(not an embedding file)")
        if len(data) != 1:
            if len(tensors) > 1 and _look_like_terms([data[k] for k in tensors]):
                raise EmbeddingFileError(path, f"several terms in one file ({len(tensors)} tensors: "
                                               f"{describe_keys(dict.fromkeys(tensors))}); an embedding file must hold one")
            raise EmbeddingFileError(path, f"unknown layout: keys {describe_keys(data)}")
        key = tensors[0]
        t = check_tensor(path, repr(key) if key else "the tensor", data[key])
        vectors = {single_encoder_key(t.shape[1]): t}
        if key == KOHYA_KEY:
            fmt = {"pickle": "kohya-pt", "safetensors": "safetensors", "image": "diffusers"}[container]
        else:
            fmt = {"pickle": "diffusers-bin", "safetensors": "diffusers-safetensors", "image": "diffusers"}[container]
            if key:
                meta["token"] = key
        dtype = _source_dtype([data[key]])
    if dtype:
        meta["source_dtype"] = dtype
    meta["format"] = fmt
    try:
        return Embedding(name=name, vectors=vectors, step=step, metadata=meta)
    except EmbeddingError as e:
        raise EmbeddingFileError(path, str(e)) from e


def _look_like_terms(tensors: list[torch.Tensor]) -> bool:
    """Several embeddings side by side (same width, 1-D or 2-D), as opposed to e.g. a LoRA."""
    widths = {t.shape[-1] for t in tensors if t.dim() in (1, 2)}
    return len(widths) == 1 and all(t.dim() in (1, 2) for t in tensors)


def _as_int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def writable_metadata(emb: Embedding) -> dict[str, Any]:
    """The embedding's metadata minus what only described the file it was read from."""
    return {k: v for k, v in emb.metadata.items() if k not in TRANSIENT_KEYS}


def check_writable(emb: Embedding) -> None:
    """Only layouts other tools can read: one encoder (SD1/SD2/tiny), or SDXL's clip_l + clip_g."""
    keys = set(emb.vectors)
    if len(keys) == 1 or keys == {CLIP_L, CLIP_G}:
        return
    raise EmbeddingError(f"embedding {emb.name!r} has encoders {sorted(keys)}: only one encoder or "
                         "clip_l + clip_g (SDXL) can be saved")


def single_tensor(emb: Embedding) -> torch.Tensor:
    """The one tensor of an SD1/SD2 embedding, as a fresh contiguous copy (never a view)."""
    if len(emb.vectors) != 1:
        raise EmbeddingError(f"embedding {emb.name!r} has {len(emb.vectors)} encoders; this layout holds one")
    return next(iter(emb.vectors.values())).detach().to("cpu", torch.float32).clone().contiguous()
