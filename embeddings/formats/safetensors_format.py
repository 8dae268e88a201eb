"""`.safetensors`: our main format, and the way kohya and diffusers files arrive.

Written layout (A1111 and ComfyUI read both; diffusers reads the SD1/SD2 one with `token=`):
- SD 1.x / 2.x / tiny: `{"emb_params": [n, D]}` (kohya's key; A1111 loads it through its
  one-tensor branch);
- SDXL: `{"clip_l": [n, 768], "clip_g": [n, 1280]}`.

Our metadata goes in the safetensors header, which A1111 ignores. The header only holds
strings, so every value is stored as JSON text: `name`, `step`, and each metadata key (family,
base_model, base_model_hash, init_text, settings ...). On reading, values that are not JSON
(other tools' headers, e.g. kohya's `ss_*`) are kept as the raw strings. `"ti_format": "1"`
marks a header we wrote.

Kinds other than standard (`embeddings.kinds`, e.g. per-layer) write their standard part under
the keys above, so A1111, ComfyUI and diffusers load the file as an ordinary embedding, plus
three header entries: `kind` ("per-layer"), `kind_info` (grouping, group names, how the standard
part was made) and `kind_parts` (the kind's own tensors as base64 raw float32,
`embeddings.kinds.base.encode_parts`). They are not extra tensors because A1111 refuses a
one-encoder file with two tensors and diffusers wants exactly one key.

A kind with no standard part (direct: its vectors are not token embeddings) writes only the header
fields and one empty tensor, `no_standard_part` (shape [0]): A1111, ComfyUI and diffusers then
skip or refuse the file for its width (0 fits no model) instead of loading something else.

As in A1111, the file name (not the stored `name`) is the embedding's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.families import CLIP_G, CLIP_L
from embeddings.formats.layouts import KOHYA_KEY, check_writable, classify, single_tensor, writable_metadata
from embeddings.kinds import kind_fields, kind_of, with_kind_fields, without_standard_part
from workspace.atomic import atomic_write_bytes

HEADER_MARK = "ti_format"
HEADER_VERSION = "1"
NO_STANDARD_PART = "no_standard_part"


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbeddingFileError(path, f"not a readable safetensors file ({msg[:200]})") from None
    return tensors, header


def decode_header(header: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in header.items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out


def load_safetensors_embedding(path: Path, name: str | None = None) -> Embedding:
    tensors, header = read_safetensors(path)
    meta = decode_header(header)
    if set(tensors) == {NO_STANDARD_PART}:
        try:
            emb = without_standard_part(name or path.stem, meta)
        except EmbeddingError as e:
            raise EmbeddingFileError(path, str(e)) from None
        if emb is None:
            raise EmbeddingFileError(path, f"only the {NO_STANDARD_PART!r} marker, and no kind in the header "
                                           "says what the embedding is")
        emb.metadata["format"] = "safetensors"
    else:
        emb = classify(path, tensors, container="safetensors", name=name or path.stem)
        try:
            emb = with_kind_fields(emb, meta)
        except EmbeddingError as e:
            raise EmbeddingFileError(path, str(e)) from None
    stored_name = meta.pop("name", None)
    step = meta.pop("step", None)
    meta.pop(HEADER_MARK, None)
    for k in ("format", "sha256", "source_dtype", "token"):  # facts about this file win over the header
        meta.pop(k, None)
    emb.metadata = {**meta, **emb.metadata}
    if isinstance(stored_name, str) and stored_name and stored_name != emb.name:
        emb.metadata["stored_name"] = stored_name
    if isinstance(step, int | float | str):
        try:
            emb.step = int(step)
        except ValueError:
            pass
    return emb


def encode_header(emb: Embedding) -> dict[str, str]:
    header = {HEADER_MARK: HEADER_VERSION, "name": json.dumps(emb.name), "step": json.dumps(int(emb.step))}
    for k, v in {**writable_metadata(emb), **kind_fields(emb)}.items():
        if k in header:
            continue
        header[str(k)] = json.dumps(v, ensure_ascii=False, default=str)
    return header


def tensors_for(emb: Embedding) -> dict[str, torch.Tensor]:
    check_writable(emb)
    if not kind_of(emb).standard_part:
        return {NO_STANDARD_PART: torch.zeros(0)}
    if set(emb.vectors) == {CLIP_L, CLIP_G}:
        return {k: emb.vectors[k].detach().to("cpu", torch.float32).clone().contiguous() for k in (CLIP_L, CLIP_G)}
    return {KOHYA_KEY: single_tensor(emb)}


def safetensors_bytes(tensors: dict[str, torch.Tensor], header: dict[str, str] | None) -> bytes:
    return save(tensors, metadata=header)


def save_safetensors(emb: Embedding, path: Path) -> Path:
    return atomic_write_bytes(path, safetensors_bytes(tensors_for(emb), encode_header(emb)))
