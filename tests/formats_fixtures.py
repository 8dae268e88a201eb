"""Helpers for the format, library and CLI tests: embeddings of every family, and checkers written
from how A1111 and diffusers read files (not from our code) to judge our files the way they would."""

from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from embeddings.embedding import Embedding

# (id, widths) of every family we write: SD1, SD2, SDXL and the tiny test model.
FAMILIES = [
    ("sd1", {"clip_l": 768}),
    ("sd2", {"clip_h": 1024}),
    ("sdxl", {"clip_l": 768, "clip_g": 1280}),
    ("tiny", {"clip_l": 32}),
]


def make_embedding(name: str = "foo", widths: dict[str, int] | None = None, n: int = 3, seed: int = 0,
                   step: int = 42, extremes: bool = True) -> Embedding:
    """Random float32 vectors including awkward values (tiny, huge, negative zero) for bit-exact checks."""
    widths = widths or {"clip_l": 768}
    gen = torch.Generator().manual_seed(seed)
    vectors = {}
    for key, w in widths.items():
        t = torch.randn(n, w, generator=gen) * 0.3
        if not extremes:
            vectors[key] = t
            continue
        t[0, 0] = 1e-38
        t[0, 1] = -0.0
        t[-1, -1] = 3.4e38
        t[-1, 0] = 0.1  # not exact in binary
        vectors[key] = t
    return Embedding(
        name=name,
        vectors=vectors,
        step=step,
        metadata={"base_model": "sd-test", "base_model_hash": "0123456789", "family": "x",
                  "settings": {"learn_rate": "0.005", "batch_size": 2}},
    )


# ---------------------------------------------------------------- A1111's safe loader
# The allow-list and zip-name rule of A1111 v1.10 `modules/safe.py`, written from its source.
_A1111_ZIP_NAMES = re.compile(r"^([^/]+)/((data/\d+)|version|byteorder|.data/serialization_id|(data\.pkl))$")
_A1111_STORAGES = {"FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage", "ByteStorage",
                   "float32", "BFloat16Storage"}


class _A1111Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return super().find_class(module, name)
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_parameter",
                                                 "_rebuild_device_tensor_from_numpy"):
            return super().find_class(module, name)
        if module == "torch" and name in _A1111_STORAGES:
            return super().find_class(module, name)
        if module == "torch.nn.modules.container" and name == "ParameterDict":
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, numel): an empty storage of that size will do,
        # the check is about which globals the stream names.
        return torch.storage.TypedStorage(int(pid[4]), dtype=torch.float32, _internal=True)


def a1111_safe_check(path: Path) -> None:
    """Raise if A1111's restricted loader would refuse the file (zip names or forbidden globals)."""
    data = Path(path).read_bytes()
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for n in z.namelist():
                if not _A1111_ZIP_NAMES.match(n):
                    raise ValueError(f"bad file inside {path}: {n}")
            pkl = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            _A1111Unpickler(io.BytesIO(z.read(pkl))).load()
    else:
        f = io.BytesIO(data)
        u = _A1111Unpickler(f)
        for _ in range(5):  # legacy stream: magic, protocol, sys info, object, storage keys
            u.load()


# ---------------------------------------------------------------- A1111's image data embed
def ref_keys(count: int) -> np.ndarray:
    s, out = 0, []
    for _ in range(count):
        s = (1664525 * s + 1013904223) % 2**32
        out.append((s % 255) & 0x0F)
    return np.array(out, dtype=np.uint8)


def ref_json(payload: dict) -> str:
    def enc(o):
        if isinstance(o, torch.Tensor):
            return {"TORCHTENSOR": o.cpu().numpy().tolist()}
        raise TypeError(type(o))

    return json.dumps(payload, default=enc)


def ref_encode_pixels(picture, payload: dict):
    """A plain encoder written from A1111's source, not ours (no decoration): what A1111's decoder accepts."""
    from PIL import Image

    data = np.frombuffer(zlib.compress(ref_json(payload).encode(), 9), np.uint8)
    h = picture.size[1]
    n = data.size + (h - data.size % h)
    n = n + (3 * h - n % (3 * h))
    blocks = []
    for nib in (data & 0x0F, data >> 4):
        b = np.resize(nib, n).reshape(h, -1, 3).astype(np.uint8)
        b = b ^ ref_keys(b.size).reshape(b.shape)
        b = b | 0x80  # a grey high nibble keeps the outer columns non-black (decoder ignores it)
        blocks.append(Image.fromarray(b, "RGB"))
    w = blocks[0].size[0]
    canvas = Image.new("RGB", (w + 1 + picture.size[0] + 1 + w, h))
    canvas.paste(blocks[0], (0, 0))
    canvas.paste(picture, (w + 1, 0))
    canvas.paste(blocks[1], (w + 1 + picture.size[0] + 1, 0))
    return canvas


def ref_decode_pixels(image) -> dict:
    """A plain decoder written from A1111's source, not ours: crop black margins, split at black columns."""
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    mask = (arr > 0).all(2)
    cols, rows = np.where(mask.any(0))[0], np.where(mask.any(1))[0]
    arr = arr[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] & 0x0F
    black = np.where(arr.sum(axis=(0, 2)) == 0)[0]
    low, high = arr[:, : black.min()], arr[:, black.max() + 1 :]
    low = low ^ ref_keys(low.size).reshape(low.shape)
    high = high ^ ref_keys(high.size).reshape(high.shape)
    raw = zlib.decompress(((high << 4) | low).astype(np.uint8).tobytes())
    return json.loads(raw, object_hook=lambda d: torch.tensor(d["TORCHTENSOR"]) if "TORCHTENSOR" in d else d)
