"""diffusers -> LDM ("A1111 checkpoint") key mapping, written for this project.

Why we need the reverse direction: diffusers ships only LDM -> diffusers inside the wheel. Tests
make a real single-file checkpoint from the tiny models with this module and load it back through
`models.single_file` (which uses diffusers' own LDM -> diffusers conversion), so a bit-identical
round trip proves both directions agree. `models.single_file` also runs this mapping over
meta-device models built from a config to know which keys and shapes a file must have, so a file
that does not fit the config gets an error naming the tensor instead of a deep diffusers error.
Users can export any loaded model as one `.safetensors` file for A1111 / ComfyUI.

The functions work on any mapping of name -> tensor (real or meta): only renames, concatenation
(OpenCLIP's fused q/k/v), transposition (OpenCLIP's text projection) and reshapes (VAE attention
as 1x1 convolutions) are done, never arithmetic, so values are copied bit for bit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from embeddings.families import ENCODERS, FAMILIES
from workspace.atomic import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each family keeps its text encoders, in encoder order. The layout under the prefix follows
# the encoder (`TextEncoder.open_clip`): HF/OpenAI CLIP names under `text_model.`, or open_clip's
# `transformer.resblocks.N` with fused attention.
TEXT_PREFIXES: dict[str, tuple[str, ...]] = {
    "sd1": ("cond_stage_model.transformer.",),
    "sd2": ("cond_stage_model.model.",),
    "sdxl": ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model."),
}
# Safetensors metadata key (and .ckpt dict key) carrying the diffusers configs of a non-standard
# architecture (the tiny models), so the file loads without guessing. A1111 ignores it.
CONFIG_METADATA_KEY = "ti_studio.diffusers_config"

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is_resnet), longest first. Depends on the block layout."""
    lpb = config["layers_per_block"]
    if not isinstance(lpb, int):
        if len(set(lpb)) != 1:
            raise ValueError("per-block layers_per_block is not supported by the LDM layout")
        lpb = lpb[0]
    n = len(config["block_out_channels"])
    pairs: list[tuple[str, str, bool]] = [
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False),
        ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for i in range(n):
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{idx}.0.", True))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{idx}.1.", False))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (lpb + 1)}.0.op.", False))
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{idx}.0.", True))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{idx}.1.", False))
        if i < n - 1:
            slot = 2 if "CrossAttn" in config["up_block_types"][i] else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.conv.", f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.conv.", False))
    return sorted(pairs, key=lambda p: len(p[0]), reverse=True)


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` state dict -> `model.diffusion_model.*` keys."""
    prefixes = _unet_prefixes(config)
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for src, dst, is_resnet in prefixes:
            if key.startswith(src):
                rest = key[len(src) :]
                if is_resnet:
                    head, _, tail = rest.partition(".")
                    rest = f"{_RESNET.get(head, head)}.{tail}"
                out[UNET_PREFIX + dst + rest] = value
                break
        else:
            raise ValueError(f"UNet weight {key!r} has no place in the LDM layout")
    return out


_VAE_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.0\."), r"\1.mid.block_1."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.1\."), r"\1.mid.block_2."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\."), r"\1.mid.attn_1.norm."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\."), r"\1.mid.attn_1.\2."),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\."), r"\1.mid.attn_1.proj_out."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\."), r"encoder.down.\1.block.\2."),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\."), r"encoder.down.\1.downsample."),
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\."), r"\1.norm_out."),
]


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` state dict -> `first_stage_model.*` keys.

    The decoder's up blocks run in reverse order in LDM; mid-block attention projections are
    1x1 convolutions there, so [C, C] weights become [C, C, 1, 1].
    """
    n = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.", key)
        if m:
            level = n - 1 - int(m.group(1))
            part = f"block.{m.group(3)}." if m.group(2) == "resnets" else "upsample."
            new = f"decoder.up.{level}.{part}" + key[m.end() :]
        else:
            for pattern, repl in _VAE_RULES:
                new, count = pattern.subn(repl, key)
                if count:
                    break
        new = new.replace(".conv_shortcut.", ".nin_shortcut.")
        if ".mid.attn_1." in new and new.endswith(".weight") and value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)
        out[VAE_PREFIX + new] = value
    return out


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model -> `<prefix>text_model.*` (SD 1.x and SDXL's first encoder)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        key = key.removeprefix("text_model.")
        out[prefix + ("" if key.startswith("text_projection") else "text_model.") + key] = value
    return out


def openclip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP text model -> open_clip layout (SD 2.x, SDXL's second encoder)."""
    plain = {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in plain.items():
        if key == "embeddings.token_embedding.weight":
            out[prefix + "token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out[prefix + "positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[prefix + "ln_final." + key.removeprefix("final_layer_norm.")] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T.contiguous()
        elif m := re.match(r"^encoder\.layers\.(\d+)\.(.+)$", key):
            block = f"{prefix}transformer.resblocks.{m.group(1)}."
            rest = m.group(2)
            if qkv := re.match(r"^self_attn\.(q|k|v)_proj\.(weight|bias)$", rest):
                fused.setdefault(f"{block}attn.in_proj_{qkv.group(2)}", {})[qkv.group(1)] = value
                continue
            rest = (
                rest.replace("self_attn.out_proj.", "attn.out_proj.")
                .replace("layer_norm1.", "ln_1.")
                .replace("layer_norm2.", "ln_2.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.")
            )
            out[block + rest] = value
        else:
            raise ValueError(f"text encoder weight {key!r} has no place in the open_clip layout")
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def components_to_ldm(
    family: str,
    unet: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]],
    vae: tuple[Mapping[str, torch.Tensor], Mapping[str, Any]],
    text_encoders: list[Mapping[str, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """One LDM state dict from per-component (state, config) pairs, in the family's layout."""
    prefixes = TEXT_PREFIXES.get(family)
    if prefixes is None:
        raise ValueError(f"unknown model family {family!r}")
    if len(prefixes) != len(text_encoders):
        raise ValueError(f"{family} has {len(prefixes)} text encoder(s), got {len(text_encoders)}")
    out = unet_to_ldm(*unet)
    out.update(vae_to_ldm(*vae))
    for key, prefix, state in zip(FAMILIES[family].encoder_keys, prefixes, text_encoders, strict=True):
        out.update(openclip_to_ldm(state, prefix) if ENCODERS[key].open_clip else clip_to_ldm(state, prefix))
    return out


def model_to_ldm(model) -> dict[str, torch.Tensor]:
    """A loaded `BaseModel` -> one LDM state dict (tensors shared, not copied)."""
    return components_to_ldm(
        model.family,
        (model.unet.state_dict(), model.unet.config),
        (model.vae.state_dict(), model.vae.config),
        [te.state_dict() for te in model.text_encoders],
    )


def model_configs(model) -> dict[str, dict[str, Any]]:
    """The diffusers/transformers configs of a loaded model, as plain JSON-able dicts."""
    configs: dict[str, dict[str, Any]] = {
        "unet": json.loads(model.unet.to_json_string()),
        "vae": json.loads(model.vae.to_json_string()),
        "scheduler": json.loads(model.scheduler.to_json_string()),
    }
    for i, te in enumerate(model.text_encoders):
        configs["text_encoder" if i == 0 else f"text_encoder_{i + 1}"] = te.config.to_dict()
    return configs


def save_single_file(model, path: str | Path, *, embed_config: bool | None = None) -> Path:
    """Write `model` as one A1111-style checkpoint (`.safetensors`, or `.ckpt` with "state_dict").

    `embed_config` stores the diffusers configs inside the file (see CONFIG_METADATA_KEY); by
    default only for random-weight built-ins, whose toy widths no bundled config describes.
    The write is atomic.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model_to_ldm(model).items()}
    if embed_config is None:
        embed_config = bool(model.random_weights)
    config_json = json.dumps(model_configs(model), sort_keys=True) if embed_config else None
    metadata = {"ti_studio.family": model.family, "ti_studio.random_weights": str(bool(model.random_weights)).lower()}
    if config_json:
        metadata[CONFIG_METADATA_KEY] = config_json
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt", **metadata})
    elif suffix in (".ckpt", ".pt", ".pth"):
        payload: dict[str, Any] = {"state_dict": state, **metadata}
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    else:
        raise ValueError(f"{path.name}: choose .safetensors or .ckpt")
    return path
