"""Where training runs and in which precision.

The frozen model weights go to the device in the compute dtype (half the memory and bandwidth on
a GPU); the trainable vectors and the optimizer stay fp32 (the "master" copy), and the splice
hook casts them into the text encoder's dtype, so gradients arrive back in fp32. fp16 needs a
GradScaler (its gradients underflow); bf16 does not. CPU and MPS train in fp32: autocast there
is slow or unsupported for these models.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DevicePlan:
    device: torch.device
    weight_dtype: torch.dtype  # frozen UNet / text encoders / VAE
    autocast_dtype: torch.dtype | None  # None: no autocast
    use_scaler: bool  # fp16 on CUDA

    @property
    def label(self) -> str:
        prec = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.weight_dtype]
        return f"{self.device.type} {prec}" + (" + grad scaler" if self.use_scaler else "")

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


def choose_device(mixed_precision: str = "auto", device: str | torch.device | None = None) -> DevicePlan:
    """Pick the device (CUDA, then MPS, then CPU unless `device` is given) and the precision.

    `mixed_precision`: auto (bf16 where the GPU supports it, else fp16; fp32 off CUDA), no, fp16, bf16.
    Asking for fp16/bf16 on a CPU falls back to fp32 rather than training slowly in emulation.
    """
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type != "cuda" or mixed_precision == "no":
        return DevicePlan(dev, torch.float32, None, False)
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    dtype = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
    return DevicePlan(dev, dtype, dtype, use_scaler=dtype == torch.float16)


def place(model, plan: DevicePlan) -> None:
    """Text encoders and UNet on the plan's device in its weight dtype: where training and
    generation run. The VAE is left where it is: it comes to the device only to encode the
    latent cache and to decode an image. The dtype is changed only when it differs (diffusers
    warns on every cast)."""
    for module in (*model.text_encoders, model.unet):
        if next(module.parameters()).dtype != plan.weight_dtype:
            module.to(device=plan.device, dtype=plan.weight_dtype)
        else:
            module.to(device=plan.device)


def place_for_generation(model) -> None:
    """Generate on the accelerator when there is one. A model already there is left as it is: the
    process shares one loaded model, and a training run may be using it in its own precision."""
    if next(model.unet.parameters()).device.type == "cpu":
        place(model, choose_device())
