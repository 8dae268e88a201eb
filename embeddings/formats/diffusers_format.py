"""diffusers' own layout: `{token: tensor}`, one file per text encoder.

`StableDiffusionPipeline.load_textual_inversion(path)` reads a one-key dict and uses the key as
the token, so we write `{"<name>": [n, D]}`; it then adds tokens `name, name_1, ... name_{n-1}`.
The suffix picks the container: `.bin` (torch pickle, like diffusers' `learned_embeds.bin`;
written in the legacy stream so A1111's safe loader accepts it too) or `.safetensors`.

SDXL needs one call per encoder, and diffusers' SDXL training script writes two files,
`learned_embeds.safetensors` (text_encoder, CLIP-L) and `learned_embeds_2.safetensors`
(text_encoder_2, CLIP-G). We follow that naming: `X.<ext>` holds `clip_l` and `X_2.<ext>` holds
`clip_g`, both under the same token. Load them in diffusers with
`pipe.load_textual_inversion("X.bin", token=t, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)`
and `pipe.load_textual_inversion("X_2.bin", token=t, text_encoder=pipe.text_encoder_2,
tokenizer=pipe.tokenizer_2)`.

On reading, a one-tensor file `X.<ext>` of width 768 with a sibling `X_2.<ext>` (or
`.safetensors`/`.bin` mix) of width 1280 with the same row count is read as one SDXL
embedding; `X_2` on its own is refused as the second half of that pair.
"""

from __future__ import annotations

from pathlib import Path

import torch

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.families import CLIP_G, CLIP_L, FAMILIES
from embeddings.formats.a1111_pt import pickle_bytes
from embeddings.formats.layouts import check_writable, single_tensor
from embeddings.formats.safetensors_format import encode_header, safetensors_bytes
from workspace.atomic import atomic_write_bytes

PAIR_SUFFIX = "_2"
SDXL_L_WIDTH = FAMILIES["sdxl"].widths[CLIP_L]
SDXL_G_WIDTH = FAMILIES["sdxl"].widths[CLIP_G]
DIFFUSERS_SUFFIXES = (".bin", ".safetensors")


def pair_paths(path: Path) -> tuple[Path, Path]:
    """(clip_l file, clip_g file) for an SDXL diffusers export at `path`."""
    return path, path.with_name(f"{path.stem}{PAIR_SUFFIX}{path.suffix}")


def _write_one(path: Path, token: str, tensor: torch.Tensor, emb: Embedding) -> Path:
    if path.suffix.lower() == ".safetensors":
        data = safetensors_bytes({token: tensor}, encode_header(emb))
    elif path.suffix.lower() in (".bin", ".pt"):
        data = pickle_bytes({token: tensor})
    else:
        raise EmbeddingError(f"{path.name}: diffusers files end in .bin or .safetensors")
    return atomic_write_bytes(path, data)


def save_diffusers(emb: Embedding, path: Path) -> Path:
    """Write `{name: tensor}`; for SDXL also `<stem>_2<suffix>`. Returns the first (or only) file."""
    check_writable(emb)
    token = emb.name
    if set(emb.vectors) == {CLIP_L, CLIP_G}:
        first, second = pair_paths(path)
        _write_one(first, token, emb.vectors[CLIP_L].clone().contiguous(), emb)
        _write_one(second, token, emb.vectors[CLIP_G].clone().contiguous(), emb)
        return first
    return _write_one(path, token, single_tensor(emb), emb)


def pair_partner(path: Path) -> tuple[Path | None, Path | None]:
    """(second file if `path` may be the first half of a pair, first file if it may be the second)."""
    stem, suffix = path.stem, path.suffix
    second = None
    for sfx in dict.fromkeys((suffix, *DIFFUSERS_SUFFIXES)):
        cand = path.with_name(f"{stem}{PAIR_SUFFIX}{sfx}")
        if cand.is_file():
            second = cand
            break
    first = None
    if stem.endswith(PAIR_SUFFIX) and len(stem) > len(PAIR_SUFFIX):
        base = stem[: -len(PAIR_SUFFIX)]
        for sfx in dict.fromkeys((suffix, *DIFFUSERS_SUFFIXES)):
            cand = path.with_name(f"{base}{sfx}")
            if cand.is_file():
                first = cand
                break
    return second, first


def is_pair(first: Embedding, second: Embedding, *, sdxl_widths: bool = True) -> bool:
    """Two single-encoder embeddings that together make an SDXL one (widths 768 and 1280, same rows).

    `sdxl_widths=False` relaxes the width rule for a pair the user names explicitly (e.g. exported
    from the tiny SDXL model): any widths, as long as the first (CLIP-L) is narrower than the second
    (CLIP-G), which catches the files given in the wrong order.
    """
    w1, w2 = (next(iter(e.widths.values())) for e in (first, second))
    widths_ok = w1 < w2 if not sdxl_widths else (
        list(first.widths.values()) == [SDXL_L_WIDTH] and list(second.widths.values()) == [SDXL_G_WIDTH]
    )
    return (
        len(first.vectors) == 1
        and len(second.vectors) == 1
        and widths_ok
        and first.num_vectors == second.num_vectors
        and first.metadata.get("format", "").startswith("diffusers")
        and second.metadata.get("format", "").startswith("diffusers")
    )


def combine_pair(first: Embedding, second: Embedding, path_l: Path, path_g: Path, *,
                 sdxl_widths: bool = True) -> Embedding:
    if not is_pair(first, second, sdxl_widths=sdxl_widths):
        raise EmbeddingFileError(
            path_l, f"not an SDXL pair with {path_g.name}: need one tensor of width {SDXL_L_WIDTH} and one of "
                    f"width {SDXL_G_WIDTH} with the same number of vectors (got {first.widths} and {second.widths})"
        )
    meta = dict(first.metadata)
    meta["format"] = first.metadata["format"] + "-sdxl-pair"
    meta["pair_file"] = path_g.name
    return Embedding(
        name=first.name,
        vectors={CLIP_L: next(iter(first.vectors.values())), CLIP_G: next(iter(second.vectors.values()))},
        step=first.step,
        metadata=meta,
    )
