"""Resolve a model argument (`tiny`, a folder, a checkpoint file, a hub id) and load it offline.

diffusers and transformers are imported inside the function that builds a model: they take
seconds to import, and every command line call imports this module (discovery, errors).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import constants, snapshot_download

from embeddings.families import BUILTIN_MODELS, FAMILIES, family_for_text_encoders
from models.base import BaseModel, ModelError
from models.hashing import short_hash
from models.single_file import load_single_file
from models.tiny import ensure_tiny_model, ensure_tiny_sd2v_model, ensure_tiny_sdxl_model
from models.tokenizer import load_clip_tokenizer
from models.toy import ensure_toy_model
from workspace.datadir import DataDir

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")


def load_builtin_model(name: str, data_dir: DataDir) -> BaseModel:
    """`tiny` (SD 1.x layout), `tiny-sdxl` or `tiny-sd2v` (SD 2.x, v-prediction): random weights,
    built once into the cache, then loaded like any diffusers folder. `toy`: the same, from its
    shipped trained weights (models/toy)."""
    ensure = {"tiny": ensure_tiny_model, "tiny-sdxl": ensure_tiny_sdxl_model,
              "tiny-sd2v": ensure_tiny_sd2v_model, "toy": ensure_toy_model}.get(name)
    if ensure is None:
        raise ModelError(f"{name}: no such built-in model (choose from {', '.join(BUILTIN_MODELS)})")
    folder = ensure(data_dir.cache)
    return load_diffusers_folder(folder, name=name, source="builtin", random_weights=BUILTIN_MODELS[name].random_weights,
                                 cache_dir=data_dir.cache)


def load_base_model(spec: str, data_dir: DataDir) -> BaseModel:
    """Load a base model by what the user typed. Never touches the network unless the user
    has turned HF_HUB_OFFLINE off, and then only for hub ids."""
    spec = (spec or "").strip()
    if not spec:
        raise ModelError("no base model given: use 'tiny', a diffusers folder, a .safetensors/.ckpt file or a hub id")
    if spec.lower() in BUILTIN_MODELS:
        return load_builtin_model(spec.lower(), data_dir)
    path = Path(spec).expanduser()
    if not path.exists() and (data_dir.models / spec).exists():
        path = data_dir.models / spec
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"{path}: not a diffusers model folder (no model_index.json)")
        return load_diffusers_folder(path, name=path.name, source="diffusers", cache_dir=data_dir.cache)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelError(f"{path.name}: not a checkpoint (expected .safetensors or .ckpt)")
        return load_single_file(path, data_dir=data_dir)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return load_hub_model(spec, data_dir)
    raise ModelError(f"{spec}: no such model file, folder or built-in name")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read at call time (the env var wins over the import-time value)."""
    env = os.environ.get("HF_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(constants.HF_HUB_CACHE)


def hub_downloads_enabled() -> bool:
    """Downloads happen only when the user turned HF_HUB_OFFLINE off (app.py defaults it on)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("0", "", "false", "no", "off")


HUB_PATTERNS = {
    "allow_patterns": ["*.json", "*.txt", "*.safetensors", "*.model"],
    "ignore_patterns": ["*.fp16.*", "*non_ema*", "*ema-only*", "safety_checker/*"],
}


def load_hub_model(repo_id: str, data_dir: DataDir) -> BaseModel:
    """A diffusers model from the local HF cache (or downloaded, only if downloads are on)."""
    offline = not hub_downloads_enabled()
    try:
        folder = snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=offline, **HUB_PATTERNS)
    except (OSError, ValueError) as e:  # LocalEntryNotFoundError, HTTP and validation errors
        if offline:
            raise ModelError(
                f"{repo_id} is not in the local Hugging Face cache and downloads are off: download it once "
                f"with `HF_HUB_OFFLINE=0 python app.py models --download {repo_id}`, "
                "or use a local diffusers folder or .safetensors file"
            ) from e
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{repo_id} could not be downloaded ({reason}): check the id and your connection") from e
    if not (Path(folder) / "model_index.json").is_file():
        raise ModelError(f"{repo_id} is not a diffusers model (no model_index.json); download its .safetensors file instead")
    return load_diffusers_folder(Path(folder), name=repo_id, source="hub", location=repo_id, cache_dir=data_dir.cache)


def load_diffusers_folder(
    folder: Path,
    *,
    name: str,
    source: str,
    location: str | None = None,
    random_weights: bool = False,
    cache_dir: Path | None = None,
) -> BaseModel:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
        is_xl = "text_encoder_2" in index and index.get("text_encoder_2") not in (None, [None, None])
        tokenizers = [load_clip_tokenizer(folder / "tokenizer")]
        text_encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)]
        if is_xl:
            tokenizers.append(load_clip_tokenizer(folder / "tokenizer_2"))
            text_encoders.append(
                CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2", local_files_only=True)
            )
        unet = UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
        sched_cls_name = index.get("scheduler", [None, "DDIMScheduler"])[1]
        sched_cls = getattr(diffusers, sched_cls_name, diffusers.DDIMScheduler)
        scheduler = sched_cls.from_pretrained(folder / "scheduler", local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{folder}: cannot load as a diffusers model: {e}") from e

    width = text_encoders[0].get_input_embeddings().weight.shape[1]
    family = family_for_text_encoders(width, len(text_encoders))
    model = BaseModel(
        name=name,
        source=source,
        location=location or str(folder),
        family=family,
        encoder_keys=FAMILIES[family].encoder_keys,
        tokenizers=tokenizers,
        text_encoders=text_encoders,
        unet=unet,
        vae=vae,
        scheduler=scheduler,
        prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        short_hash=short_hash(folder, cache_dir),
        random_weights=random_weights,
    )
    return model.freeze()
