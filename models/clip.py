"""The CLIP model that scores snapshots (likeness, editability), found offline like base models.

Where a CLIP is looked for, first match wins:

1. what the user names (`--clip`, the "CLIP model" setting): a folder in open_clip's layout
   (`open_clip_config.json` + `open_clip_model.safetensors`, as open_clip models come on the
   Hugging Face hub), a weights file with its open_clip config as `<same name>.json` beside it,
   a name under `data/models/clip/`, a Hugging Face id already in the local cache, or `toy`
   (the toy world's own CLIP, shipped in models/toy/weights);
2. with nothing named: the first such folder or file pair under `data/models/clip/`, then open_clip
   models in the local Hugging Face cache; for the toy base model, the toy CLIP.

Nothing is downloaded here. When none is found, `ClipNotFound` says in one sentence what to put
where; the eval loss works without a CLIP.

open_clip is imported inside the functions that build a model: it pulls in torchvision and timm,
which listing the choices (the UI's dropdown) does not need.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.base import ModelError
from models.load import hf_cache_dir
from workspace.datadir import DataDir

CONFIG_NAME = "open_clip_config.json"
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TOY = "toy"
CLIP_SUBFOLDER = "clip"

WHERE_TO_PUT = (
    "no CLIP model found for the likeness and editability scores: put an open_clip model folder "
    "(open_clip_config.json + open_clip_model.safetensors, e.g. laion/CLIP-ViT-B-32-laion2B-s34B-b79K "
    "from the Hugging Face hub) in {folder}, or name one in the CLIP model setting; the eval loss works without it"
)


class ClipNotFound(ModelError):
    """No usable CLIP: the message says what to put where."""


@dataclass(frozen=True)
class ClipInfo:
    """One CLIP that can be used. `spec` is what `load_clip` accepts; `kind`: folder, file, hub-cache, toy."""

    name: str
    spec: str
    kind: str
    path: str

    def identity(self) -> str:
        """Names these weights for the score cache: the path and the weight file's size and time,
        so replacing the weights invalidates cached scores without hashing gigabytes."""
        files = _weight_files(Path(self.path))
        stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files]
        return json.dumps([self.kind, self.path, stamp])


@dataclass
class ClipModel:
    """A loaded open_clip model with its tokenizer and image preprocessing; features are L2-normalised."""

    info: ClipInfo
    model: Any
    tokenizer: Any
    preprocess: Any
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def name(self) -> str:
        return self.info.name

    @torch.no_grad()
    def encode_images(self, images: Sequence[Any], batch: int = 32) -> torch.Tensor:
        """PIL images -> [N, D] unit vectors (float32, on the CPU)."""
        out = []
        for i in range(0, len(images), batch):
            x = torch.stack([self.preprocess(im.convert("RGB")) for im in images[i:i + batch]]).to(self.device)
            out.append(self.model.encode_image(x, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch: int = 64) -> torch.Tensor:
        """Texts -> [N, D] unit vectors (float32, on the CPU)."""
        out = []
        for i in range(0, len(texts), batch):
            ids = self.tokenizer(list(texts[i:i + batch])).to(self.device)
            out.append(self.model.encode_text(ids, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 0)


# ---- finding ---------------------------------------------------------------------------------------
def clip_folder(data_dir: DataDir) -> Path:
    return data_dir.models / CLIP_SUBFOLDER


def discover_clips(data_dir: DataDir, *, hf_cache: Path | None = None) -> list[ClipInfo]:
    """Every CLIP found without loading one: `data/models/clip/` (sorted), the HF cache (sorted),
    then the toy CLIP when its weights are shipped."""
    found = _scan_folder(clip_folder(data_dir))
    found += _scan_hf_cache(hf_cache or hf_cache_dir())
    toy = _toy_info()
    if toy is not None:
        found.append(toy)
    return found


def find_clip(spec: str, data_dir: DataDir, *, base_model: str = "", hf_cache: Path | None = None) -> ClipInfo:
    """The CLIP `spec` means (see the module docstring); "" picks one. ClipNotFound when none is there."""
    spec = (spec or "").strip()
    if not spec:
        if base_model.strip().lower() == TOY and _toy_info() is not None:
            return _toy_info()  # type: ignore[return-value]
        found = [c for c in discover_clips(data_dir, hf_cache=hf_cache) if c.kind != "toy"]
        if not found:
            raise ClipNotFound(WHERE_TO_PUT.format(folder=clip_folder(data_dir)))
        return found[0]
    if spec.lower() == TOY:
        toy = _toy_info()
        if toy is None:
            raise ClipNotFound("the toy CLIP's weights (models/toy/weights/clip.safetensors) are not there: "
                               "build them with python -m models.toy.build")
        return toy
    path = Path(spec).expanduser()
    if not path.exists() and (clip_folder(data_dir) / spec).exists():
        path = clip_folder(data_dir) / spec
    if path.is_dir():
        info = _folder_info(path, path.name, "folder")
        if info is None:
            raise ClipNotFound(f"{path}: not an open_clip model folder (needs {CONFIG_NAME} and one of "
                               f"{', '.join(WEIGHT_NAMES)})")
        return info
    if path.is_file():
        info = _file_info(path)
        if info is None:
            raise ClipNotFound(f"{path}: a CLIP weights file needs its open_clip config beside it as "
                               f"{path.with_suffix('.json').name}")
        return info
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        for info in _scan_hf_cache(hf_cache or hf_cache_dir()):
            if info.name == spec:
                return info
        raise ClipNotFound(f"{spec} is not in the local Hugging Face cache (with {CONFIG_NAME} and weights); "
                           f"download it once or put its folder in {clip_folder(data_dir)}")
    raise ClipNotFound(f"{spec}: no such CLIP folder or file (nor in {clip_folder(data_dir)})")


def _scan_folder(folder: Path) -> list[ClipInfo]:
    out: list[ClipInfo] = []
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        info = _folder_info(p, p.name, "folder") if p.is_dir() else _file_info(p)
        if info is not None:
            out.append(info)
    return out


def _scan_hf_cache(cache: Path) -> list[ClipInfo]:
    out: list[ClipInfo] = []
    if not cache.is_dir():
        return out
    for repo in sorted(cache.glob("models--*")):
        repo_id = repo.name.removeprefix("models--").replace("--", "/", 1)
        for snap in sorted((repo / "snapshots").glob("*"), key=lambda s: s.stat().st_mtime, reverse=True):
            info = _folder_info(snap, repo_id, "hub-cache")
            if info is not None:
                out.append(ClipInfo(repo_id, repo_id, "hub-cache", str(snap)))
                break
    return out


def _folder_info(folder: Path, name: str, kind: str) -> ClipInfo | None:
    if not (folder / CONFIG_NAME).is_file() or not any((folder / w).is_file() for w in WEIGHT_NAMES):
        return None
    return ClipInfo(name, str(folder), kind, str(folder))


def _file_info(path: Path) -> ClipInfo | None:
    if path.suffix.lower() not in WEIGHT_SUFFIXES or not path.with_suffix(".json").is_file():
        return None
    return ClipInfo(path.stem, str(path), "file", str(path))


def _toy_info() -> ClipInfo | None:
    weights = Path(__file__).resolve().parent / "toy" / "weights" / "clip.safetensors"
    return ClipInfo(TOY, TOY, "toy", str(weights)) if weights.is_file() else None


def _weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [path / w for w in WEIGHT_NAMES if (path / w).is_file()]


# ---- loading ---------------------------------------------------------------------------------------
_lock = threading.Lock()
_loaded: tuple[str, ClipModel] | None = None


def load_clip(spec: str, data_dir: DataDir, *, base_model: str = "", device: torch.device | str = "cpu") -> ClipModel:
    """The CLIP `spec` means, loaded once per process (the last one asked for is kept)."""
    global _loaded
    info = find_clip(spec, data_dir, base_model=base_model)
    key = info.identity() + str(device)
    with _lock:
        if _loaded is not None and _loaded[0] == key:
            return _loaded[1]
        clip = _build(info, torch.device(device))
        _loaded = (key, clip)
        return clip


def _build(info: ClipInfo, device: torch.device) -> ClipModel:
    import open_clip

    try:
        if info.kind == "toy":
            from models.toy.clip import MEAN, STD
            from models.toy.clip import load_clip as load_toy

            _check_toy_hash(Path(info.path))
            model, tokenizer = load_toy(Path(info.path))
            size = model.visual.image_size
            preprocess = open_clip.image_transform(size, is_train=False, mean=MEAN, std=STD)
        elif info.kind == "file":
            path = Path(info.path)
            config = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            model_cfg = config.get("model_cfg", config)
            pre = config.get("preprocess_cfg", {})
            name = "local-" + hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
            if name not in open_clip.list_models():
                open_clip.factory._MODEL_CONFIGS[name] = model_cfg  # the registry add_model_config fills
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=str(path), image_mean=pre.get("mean"), image_std=pre.get("std"))
            tokenizer = open_clip.get_tokenizer(name)
        else:
            ref = f"local-dir:{info.path}"
            model, preprocess = open_clip.create_model_from_pretrained(ref)
            tokenizer = open_clip.get_tokenizer(ref)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{info.path}: cannot load as an open_clip CLIP model: {e}") from e
    model = model.to(device).eval().requires_grad_(False)
    return ClipModel(info, model, tokenizer, preprocess, device)


def _check_toy_hash(path: Path) -> None:
    """The toy CLIP's file against the sha256 its build recorded (when a manifest lists it): a
    corrupted or half-updated checkout fails naming the file instead of scoring with wrong weights."""
    from models.toy.weights import MANIFEST, sha256

    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return
    want = json.loads(manifest.read_text(encoding="utf-8")).get("files", {}).get(path.name)
    if want and (path.stat().st_size != want.get("bytes") or sha256(path) != want.get("sha256")):
        raise ModelError(f"{path}: does not match the sha256 in {MANIFEST}; restore it from git or rebuild with "
                         "python -m models.toy.build")


def save_clip_folder(model, model_cfg: dict[str, Any], folder: Path, *, mean: Sequence[float] | None = None,
                     std: Sequence[float] | None = None) -> Path:
    """Write an open_clip model in the folder layout `load_clip` reads (config + safetensors)."""
    from safetensors.torch import save_file

    from workspace.atomic import atomic_path, atomic_write_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pre = {k: list(v) for k, v in (("mean", mean), ("std", std)) if v is not None}
    atomic_write_text(folder / CONFIG_NAME, json.dumps({"model_cfg": model_cfg, "preprocess_cfg": pre}, indent=2))
    with atomic_path(folder / WEIGHT_NAMES[0]) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    return folder
