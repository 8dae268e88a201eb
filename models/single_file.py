"""Load a single-file Stable Diffusion checkpoint (A1111 / model-site `.safetensors` or `.ckpt`) offline.

How a file becomes a `BaseModel`, and why each step is there:

1. Read it safely. `.safetensors` goes through `safetensors.safe_open`, which checks the file
   against its own header first (a truncated download is named as such); `.ckpt` goes through
   `torch.load(weights_only=True)`, so a pickle that would run code is refused, never executed.
2. Detect the family (sd1 / sd2 / sdxl) from key names alone: the text encoder's layout tells
   them apart (`cond_stage_model.transformer` = OpenAI CLIP-L, `cond_stage_model.model` =
   OpenCLIP-H, `conditioner.embedders.*` = SDXL). LoRAs, embeddings, VAEs, inpainting and refiner
   files get a message saying what they are.
3. Choose the diffusers config folder, first match wins:
   `config_dir` argument > configs stored in the file by `models.ldm_convert.save_single_file`
   (the tiny built-ins, whose toy widths no published config describes) > the bundled
   `models/configs/<family>` folder. We do not guess architectures from shapes: attention head
   counts cannot be read from weights, and a guess would load "fine" and then generate garbage.
   Instead every file is checked against the chosen config (expected keys and shapes come from
   meta-device models run through our own LDM mapping) and a misfit names the tensor.
4. Choose the prediction type. SD 2.x weights do not say whether they are epsilon (512-base) or
   v-prediction (768-v), so, first match wins: the `prediction_type` argument > an A1111 sidecar
   `<name>.yaml` (`parameterization: "v"` = v_prediction, otherwise epsilon) > the file's
   `modelspec.prediction_type` metadata > the stored config's scheduler > for SD 2.x a filename hint
   (`768`, `-v` -> v; `512`, `base` -> epsilon) > the family default. The SD 2.x default is
   v_prediction because most SD 2.x checkpoints people download are 2.0/2.1-768-v finetunes; the
   reason for the choice is kept in `BaseModel.extra["prediction_type_reason"]`.
5. Build each component with diffusers' `from_single_file(state_dict, config=<dir>,
   local_files_only=True)` (its own LDM -> diffusers conversion), the text encoders with its CLIP
   converter, the tokenizers with `models.tokenizer` (with the family's pad tokens).
   Nothing touches the network, and no file outside the checkpoint and our folders is read.

accelerate, diffusers and transformers are imported inside the functions that build models: they
take seconds to import, and discovery reads checkpoint headers through this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from embeddings.families import CLIP_G, CLIP_L, EOS_PAD, FAMILIES, FAMILY_NAMES
from models.base import BaseModel, ModelError
from models.hashing import short_hash
from models.ldm_convert import CONFIG_METADATA_KEY, TEXT_PREFIXES, UNET_PREFIX, VAE_PREFIX, components_to_ldm
from models.tokenizer import load_clip_tokenizer, write_clip_tokenizer
from workspace.atomic import atomic_write_text
from workspace.datadir import DataDir

log = logging.getLogger(__name__)

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class Checkpoint:
    """The tensors of a single-file checkpoint plus the string metadata stored beside them."""

    state: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in self.state.items()}


# ---------------------------------------------------------------------------------------------
# Reading files


@contextlib.contextmanager
def _open_safetensors(path: Path) -> Iterator[Any]:
    """`safe_open` on a checkpoint, its errors turned into a ModelError naming the file and the reason.

    safetensors checks the header against the file size when it opens a file, so a partial
    download is reported as truncated here rather than as a confusing error later.
    """
    try:
        size = path.stat().st_size
        handle = safe_open(str(path), framework="pt", device="cpu")
    except OSError as e:
        raise ModelError(f"{path.name}: cannot read: {e.strerror or e}") from e
    except SafetensorError as e:
        reason = str(e).removeprefix("Error while deserializing header: ")
        if size < 8:
            raise ModelError(f"{path.name}: not a checkpoint (file is {size} bytes)") from e
        if "not fully covered" in reason:
            raise ModelError(f"{path.name}: truncated or damaged: its {size} bytes are not the data its "
                             "header promises (download it again)") from e
        raise ModelError(f"{path.name}: not a safetensors file ({reason})") from e
    with handle as f:
        yield f


def read_safetensors_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Key -> shape and the metadata of a `.safetensors` file, from its header only (cheap)."""
    path = Path(path)
    with _open_safetensors(path) as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - not a dict
        metadata = f.metadata() or {}
    return shapes, {str(k): str(v) for k, v in metadata.items()}


def read_checkpoint(path: str | Path) -> Checkpoint:
    """All tensors of a `.safetensors` or `.ckpt` file, on the CPU. Never runs pickled code."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    return _read_torch(path)


def _read_safetensors(path: Path) -> Checkpoint:
    with _open_safetensors(path) as f:
        try:
            state = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a dict
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ModelError(f"{path.name}: cannot read as safetensors: {e}") from e
        metadata = f.metadata() or {}
    return Checkpoint(state=state, metadata={str(k): str(v) for k, v in metadata.items()})


def _read_torch(path: Path) -> Checkpoint:
    with open(path, "rb") as f:
        magic = f.read(2)
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and magic != b"PK" and magic[:1] != b"\x80":  # torch zip archive, or a legacy pickle
        raise ModelError(f"{path.name}: not a checkpoint (neither a torch archive nor a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise ModelError(
            f"{path.name}: refused: the file holds pickled Python objects{what} that could run code "
            "when loaded; use a .safetensors version of this model"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ModelError(f"{path.name}: truncated or damaged torch checkpoint ({str(e).splitlines()[0]})") from e
    metadata: dict[str, str] = {}
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        metadata.update({k: v for k, v in obj.items() if isinstance(v, str)})
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelError(f"{path.name}: not a checkpoint (holds a {type(obj).__name__}, not named tensors)")
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return Checkpoint(state=state, metadata=metadata)


# ---------------------------------------------------------------------------------------------
# Family and prediction type


def detect_family(shapes: Mapping[str, Any], name: str = "checkpoint") -> str:
    """"sd1", "sd2" or "sdxl" from key names (and one shape); ModelError saying what it is otherwise."""
    keys = list(shapes)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ModelError(f"{name}: not a Stable Diffusion checkpoint: {_what_is_it(keys)}")
    conv_in = shapes.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and len(conv_in) == 4 and conv_in[1] != 4:
        raise ModelError(
            f"{name}: its UNet takes {conv_in[1]} input channels (an inpainting or instruct model); "
            "textual inversion needs the plain text-to-image model it was made from"
        )
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if all(has(prefix) for prefix in TEXT_PREFIXES["sdxl"]):
        return "sdxl"
    if has("conditioner.embedders.0.model."):  # OpenCLIP-G alone, where SDXL keeps CLIP-L
        raise ModelError(f"{name}: an SDXL refiner (no CLIP-L text encoder); train on the SDXL base model instead")
    if TEXT_PREFIXES["sd2"][0] + "token_embedding.weight" in shapes:
        return "sd2"
    if has(TEXT_PREFIXES["sd1"][0]):
        return "sd1"
    raise ModelError(
        f"{name}: unknown layout: it has a UNet but no text encoder this app knows "
        "(expected cond_stage_model.* for SD 1.x/2.x or conditioner.embedders.* for SDXL)"
    )


def _what_is_it(keys: list[str]) -> str:
    if not keys:
        return "it holds no tensors"
    if any(k.startswith(("lora_", "lora_unet_", "lora_te")) or ".lora_" in k or "lora_down" in k for k in keys):
        return "it looks like a LoRA"
    if any(k in ("emb_params", CLIP_L, CLIP_G) or k.startswith("string_to_param") for k in keys):
        return "it looks like a textual-inversion embedding"
    if any(k.startswith(("encoder.conv_in", "decoder.conv_in", "first_stage_model.")) for k in keys):
        return "it looks like a VAE only"
    return f"no UNet weights ({UNET_PREFIX}*) among its {len(keys)} tensors"


def sidecar_prediction_type(path: str | Path) -> str | None:
    """A1111 convention: `<name>.yaml` next to the checkpoint; `parameterization: "v"` means v."""
    path = Path(path)
    for yaml_path in (path.with_suffix(".yaml"), path.with_suffix(".yml")):
        if yaml_path.is_file():
            try:
                text = yaml_path.read_text(errors="replace")
            except OSError:
                continue
            v = re.search(r"^\s*parameterization\s*:\s*[\"']?v[\"']?\s*$", text, re.MULTILINE)
            return "v_prediction" if v else "epsilon"
    return None


def choose_prediction_type(
    path: Path, family: str, metadata: Mapping[str, str], stored: str | None, override: str | None
) -> tuple[str, str]:
    """(prediction type, why). See the module docstring for the order and the SD 2.x default."""
    if override:
        value = {"v": "v_prediction", "eps": "epsilon"}.get(override, override)
        if value not in PREDICTION_TYPES:
            raise ModelError(f"prediction type {override!r}: choose epsilon or v_prediction")
        return value, "given"
    sidecar = sidecar_prediction_type(path)
    if sidecar:
        return sidecar, f"from {path.with_suffix('.yaml').name}"
    spec = metadata.get("modelspec.prediction_type", "").strip().lower()
    if spec in ("v", "v_prediction", "epsilon", "eps"):
        return ("v_prediction" if spec.startswith("v") else "epsilon"), "from the file's modelspec metadata"
    if stored in PREDICTION_TYPES:
        return stored, "from the config stored in the file"
    if family == "sd2":
        stem = path.stem.lower()
        if re.search(r"768|(^|[-_.])v($|[-_.])", stem):
            return "v_prediction", "SD 2.x, the file name says 768/v"
        if re.search(r"512|base", stem):
            return "epsilon", "SD 2.x, the file name says 512/base"
        return "v_prediction", "SD 2.x default (most are 768-v; add a .yaml or choose epsilon if images are noise)"
    return "epsilon", f"{family} default"


# ---------------------------------------------------------------------------------------------
# Configs


def bundled_config_dir(family: str, prediction_type: str = "epsilon") -> Path:
    """The bundled diffusers config folder for a family (SD 2.x: 512-eps or 768-v)."""
    if family not in FAMILIES:
        raise ModelError(f"unknown model family {family!r} (choose from {', '.join(FAMILY_NAMES)})")
    name = "sd2-v" if family == "sd2" and prediction_type == "v_prediction" else family
    return CONFIGS_DIR / name


def _model_index(family: str, scheduler_class: str) -> dict[str, Any]:
    index = json.loads((CONFIGS_DIR / family / "model_index.json").read_text())
    index["scheduler"] = ["diffusers", scheduler_class]
    return index


def write_stored_config(config_json: str, family: str, cache_dir: Path) -> Path:
    """Turn configs stored in a checkpoint into a diffusers config folder under the cache.

    The folder name is the hash of the configs, so identical files share one folder and a
    concurrent writer can only write the same bytes.
    """
    try:
        configs = json.loads(config_json)
        scheduler_class = configs["scheduler"]["_class_name"]
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"the diffusers configs stored in the file are unreadable: {e}") from e
    digest = hashlib.sha256(f"{family}\n{config_json}".encode()).hexdigest()[:16]
    folder = cache_dir / "single_file_configs" / digest
    if (folder / "model_index.json").is_file():
        return folder
    for part, config in configs.items():
        name = "scheduler_config.json" if part == "scheduler" else "config.json"
        atomic_write_text(folder / part / name, json.dumps(config, indent=2, sort_keys=True))
    atomic_write_text(folder / "model_index.json", json.dumps(_model_index(family, scheduler_class), indent=2))
    return folder


@lru_cache(maxsize=8)
def expected_shapes(config_dir: Path, family: str) -> dict[str, tuple[int, ...]]:
    """LDM key -> shape a checkpoint must have to fit `config_dir` (meta models, no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config_dir / "vae"))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(config_dir / "text_encoder"))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config_dir / "text_encoder_2")))
    ldm = components_to_ldm(
        family, (unet.state_dict(), unet.config), (vae.state_dict(), vae.config), [e.state_dict() for e in encoders]
    )
    return {k: tuple(v.shape) for k, v in ldm.items()}


def check_fits(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], name: str,
               config_label: str) -> None:
    """Raise a ModelError naming the first tensors that do not fit the chosen config."""
    if not any(k.startswith(VAE_PREFIX) for k in shapes):
        raise ModelError(f"{name}: the file has no VAE ({VAE_PREFIX}*); a full checkpoint is needed")
    missing = [k for k in expected if k not in shapes]
    wrong = [(k, shapes[k], v) for k, v in expected.items() if k in shapes and not _same_shape(shapes[k], v)]
    if not missing and not wrong:
        return
    details = [f"{k} is {list(got)}, expected {list(want)}" for k, got, want in wrong[:3]]
    if missing:
        details.append(f"{len(missing)} expected tensor(s) missing, e.g. {missing[0]}")
    raise ModelError(
        f"{name}: does not fit the {config_label} architecture: {'; '.join(details)}. "
        "If it is a non-standard model, load it with a diffusers config folder that describes it"
    )


def _same_shape(got: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Equal, or equal but for trailing 1x1 (VAE attention stored as Linear by some converters)."""
    got, want = tuple(got), tuple(want)
    strip = lambda s: s[:-2] if len(s) == 4 and s[2:] == (1, 1) else s  # noqa: E731
    return got == want or strip(got) == strip(want)


def family_tokenizers(family: str, cache_dir: Path) -> list[Any]:
    """CLIP tokenizers for a family, written once into the cache from open_clip's vocabulary."""
    out = []
    for pad in FAMILIES[family].pad_tokens:
        folder = cache_dir / "tokenizers" / ("clip" if pad == EOS_PAD else "clip-pad-bang")
        if not (folder / "tokenizer_config.json").is_file():
            write_clip_tokenizer(folder, pad_token=pad)
        out.append(load_clip_tokenizer(folder))
    return out


# ---------------------------------------------------------------------------------------------
# Loading


def load_single_file(
    path: str | Path,
    data_dir: DataDir,
    *,
    family: str | None = None,
    prediction_type: str | None = None,
    config_dir: str | Path | None = None,
    dtype: torch.dtype | None = torch.float32,
) -> BaseModel:
    """Load an A1111-style checkpoint fully offline. See the module docstring for each choice.

    `dtype` defaults to float32 like folder models (fp16 files upcast exactly); None keeps the
    file's own dtype.
    """
    path = Path(path).expanduser()
    name = path.name
    ckpt = read_checkpoint(path)
    _normalise_old_clip_keys(ckpt.state)
    shapes = ckpt.shapes
    fam = family or detect_family(shapes, name)
    if fam not in FAMILIES:
        raise ModelError(f"{name}: unknown model family {fam!r} (choose from {', '.join(FAMILY_NAMES)})")

    stored = ckpt.metadata.get(CONFIG_METADATA_KEY)
    stored_pred = None
    if stored and config_dir is None:
        try:
            stored_pred = json.loads(stored)["scheduler"].get("prediction_type")
        except (ValueError, KeyError, TypeError, AttributeError):
            stored_pred = None
    pred, why = choose_prediction_type(path, fam, ckpt.metadata, stored_pred, prediction_type)
    if config_dir is not None:
        cfg, label = Path(config_dir), f"given config folder {Path(config_dir).name}"
        if not (cfg / "unet" / "config.json").is_file():
            raise ModelError(f"{cfg}: not a diffusers config folder (no unet/config.json)")
    elif stored:
        cfg, label = write_stored_config(stored, fam, data_dir.cache), "stored in the file"
    else:
        cfg = bundled_config_dir(fam, pred)
        label = f"standard {cfg.name}"
    check_fits(shapes, expected_shapes(cfg.resolve(), fam), name, label)

    try:
        model = _build(ckpt.state, cfg, fam, pred, data_dir.cache, dtype)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelError(f"{name}: cannot load as a {fam} checkpoint: {e}") from e
    meta_random = ckpt.metadata.get("ti_studio.random_weights", "").lower() == "true"
    result = BaseModel(
        name=path.stem,
        source="single-file",
        location=str(path),
        family=fam,
        encoder_keys=FAMILIES[fam].encoder_keys,
        prediction_type=pred,
        short_hash=short_hash(path, data_dir.cache),
        random_weights=meta_random,
        extra={"config": label, "prediction_type_reason": why},
        **model,
    )
    log.info("loaded %s as %s (%s config, %s: %s)", name, fam, label, pred, why)
    return result.freeze()


def _normalise_old_clip_keys(state: dict[str, torch.Tensor]) -> None:
    """Early SD 1.x files name CLIP-L weights without `text_model.`; add it, as diffusers expects."""
    old = "cond_stage_model.transformer.embeddings.token_embedding.weight"
    if old in state:
        for key in [k for k in state if k.startswith("cond_stage_model.transformer.")]:
            if not key.startswith("cond_stage_model.transformer.text_model."):
                new = key.replace("cond_stage_model.transformer.", "cond_stage_model.transformer.text_model.", 1)
                state[new] = state.pop(key)


def _build(state: dict[str, torch.Tensor], cfg: Path, family: str, pred: str, cache_dir: Path,
           dtype: torch.dtype | None) -> dict[str, Any]:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if dtype is not None and all(t.dtype == dtype for t in state.values() if t.is_floating_point()):
        dtype = None  # already right: no cast (and no diffusers warning about casting)
    common = {"config": str(cfg), "local_files_only": True, "torch_dtype": dtype}
    unet = UNet2DConditionModel.from_single_file(state, subfolder="unet", **common)
    vae = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
    text_encoders = [create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder", **common)]
    if family == "sdxl":
        text_encoders.append(
            create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, state, subfolder="text_encoder_2", **common)
        )
    index = json.loads((cfg / "model_index.json").read_text()) if (cfg / "model_index.json").is_file() else {}
    sched_name = (index.get("scheduler") or [None, "DDIMScheduler"])[1]
    sched_cls = getattr(diffusers, sched_name, diffusers.DDIMScheduler)
    scheduler = sched_cls.from_pretrained(cfg, subfolder="scheduler", local_files_only=True)
    if scheduler.config.get("prediction_type") != pred:
        scheduler = sched_cls.from_config(scheduler.config, prediction_type=pred)
    return {
        "tokenizers": family_tokenizers(family, cache_dir),
        "text_encoders": text_encoders,
        "unet": unet,
        "vae": vae,
        "scheduler": scheduler,
    }
