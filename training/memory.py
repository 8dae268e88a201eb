"""Pre-flight GPU memory estimate for a training run, before the model loads.

`estimate_memory()` is a pure function of the model's shape (family or built-in), resolution,
batch size, precision, gradient checkpointing and preview size. It answers "will this run fit
on my GPU?" before minutes of model loading end in an out-of-memory error, and, when it will
not fit (`fit_options()`), which settings would: gradient checkpointing, a half precision, a
smaller batch, a lower resolution, smaller previews.

The model. The run passes through three phases; the peak is the largest of them.

- training step: frozen text encoders + UNet on the GPU in the weight dtype (the VAE is off the
  GPU, the trainable vectors and AdamW's state are a few kB), plus what autograd keeps for the
  backward pass. Only the vectors learn, but their gradient flows through the text encoder and
  every cross-attention into the whole UNet, so nearly every UNet activation is kept: memory
  grows with batch x latent pixels ((resolution / 8)^2). The bytes kept per latent pixel were
  counted on a CPU with `torch.autograd.graph.saved_tensors_hooks` on the real UNet layouts
  (SDXL at half width, scaled back), in fp32 and with CUDA autocast emulated (weights in half
  precision, group/layer norms computed in fp32: their inputs and the activations right after
  them stay fp32, which is why half precision keeps about 0.63 of fp32's bytes, not 0.5).
  With gradient checkpointing (diffusers checkpoints every ResNet and transformer block) what
  is kept is the blocks' inputs, the layers between blocks, and one block recomputed at a time.
  Attention is PyTorch's SDPA (flash / memory-efficient kernels): linear in pixels, no
  pixels^2 attention matrix. The text encoders add a constant per sample (77 tokens).
- latent caching: the weights above plus the VAE, encoding one image at full resolution
  without gradients (a handful of 128-channel full-resolution tensors live at once).
- previews: the weights plus the VAE decoding at the preview size (SDXL's VAE decodes in fp32)
  and the UNet sampling with classifier-free guidance (batch 2, no gradients).

Expected error: the activation counts are exact for the layouts counted, but not yet compared
with `torch.cuda.max_memory_allocated` on a GPU: allocator rounding, cuDNN workspaces and
backward-pass transients are the `CALIBRATION` factors below, educated guesses until measured.
Expect about +-30% on the peak until `benchmarks/gpu_check.sh` has been run on a GPU; it prints
the measured peak beside this estimate and the factor that would make them agree, to be written
into `CALIBRATION` (one place). The estimate is of peak *allocated* memory; the fit check adds
the allocator's fragmentation margin and compares with the GPU's free memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from embeddings.families import BUILTIN_MODELS
from models.discovery import folder_family
from models.single_file import detect_family, read_safetensors_header

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class Shape:
    """What memory depends on for one model layout. Activation bytes are per sample, per latent
    pixel, in half precision (fp16/bf16 autocast); `act_const` is the per-sample part that does
    not grow with pixels (cross-attention keys/values of the 77 tokens)."""

    label: str
    unet_params: int
    text_params: tuple[int, ...]  # parameters per text encoder
    text_widths: tuple[tuple[int, int], ...]  # (hidden width, layers) per encoder
    vae_params: int
    act_per_px: float  # bytes kept for backward per latent pixel, no checkpointing
    act_per_px_ckpt: float  # the same with gradient checkpointing
    act_const: float  # bytes per sample independent of pixels
    vae_fp32_decode: bool = False  # SDXL's VAE overflows fp16: diffusers decodes it in fp32
    native: int = 512


# Counted with saved_tensors_hooks on the bundled configs (models/configs): SD 1.x and SD 2.x share
# the UNet layout (their activations differ by the cross-attention width only); SDXL was counted
# at half width and scaled by 2. Parameter counts are the configs' own.
SHAPES: dict[str, Shape] = {
    "sd1": Shape("SD 1.x", 859_520_964, (123_060_480,), ((768, 12),), 83_653_863,
                 act_per_px=0.238e6, act_per_px_ckpt=0.058e6, act_const=4.4e6),
    "sd2": Shape("SD 2.x", 865_910_724, (340_387_840,), ((1024, 23),), 83_653_863,
                 act_per_px=0.238e6, act_per_px_ckpt=0.058e6, act_const=5.9e6, native=768),
    "sdxl": Shape("SDXL", 2_567_463_684, (123_060_480, 694_659_840), ((768, 12), (1280, 32)), 83_653_863,
                  act_per_px=0.403e6, act_per_px_ckpt=0.0485e6, act_const=28e6, vae_fp32_decode=True, native=1024),
}
# The built-ins: toy widths (UNet 32-64 channels instead of 320-1280), so about a tenth of the
# per-pixel activations of the layout they copy. For trying the workflow; their numbers are tiny.
SHAPES.update({
    "tiny": Shape("tiny", 2_446_788, (1_597_162,), ((32, 2),), 90_847, 0.024e6, 0.006e6, 0.1e6, native=64),
    "tiny-sdxl": Shape("tiny-sdxl", 3_128_964, (1_600_672, 3_238_208), ((32, 2), (64, 2)), 90_847, 0.02e6,
                       0.003e6, 0.1e6, vae_fp32_decode=True, native=64),
    "tiny-sd2v": Shape("tiny-sd2v", 2_469_316, (2_413_296,), ((48, 2),), 90_847, 0.024e6, 0.006e6, 0.1e6,
                       native=64),
})

SMALL_BUILTIN = {"sd1": "tiny", "sdxl": "tiny-sdxl", "sd2": "tiny-sd2v"}  # by family, for built-ins not listed

# ---- calibration: the one place gpu_check.sh's measurements go ------------------------------------------
CALIBRATION = {
    # measured peak / estimated peak of the training step, per shape and checkpointing; 1.0 until
    # measured. benchmarks/gpu_check.sh prints the value to write here for each row it measures.
    "scale": {("sd1", False): 1.0, ("sd1", True): 1.0, ("sdxl", False): 1.0, ("sdxl", True): 1.0},
    "fp32_activation_factor": 1.55,  # fp32 keeps ~1/0.645 of half precision's activation bytes (counted)
    "backward_transient": 0.15,  # activation gradients and cuDNN workspaces during backward, x activations
    "fixed_bytes": 96 * MIB,  # cuBLAS workspaces, the latent cache, noise, optimizer state, small tensors
    "fragmentation": 0.10,  # reserved above allocated in the caching allocator, for the fit check
    "vae_encode_bytes_per_px": 4 * 128 * 2,  # live full-resolution tensors x channels x bytes, half precision
    "vae_decode_bytes_per_px": 5 * 128 * 2,  # the decoder's last levels (256 + 3 x 128 channels live)
    "unet_infer_bytes_per_px": 0.01e6,  # sampling without gradients, per latent pixel per image
}

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


@dataclass(frozen=True)
class MemorySettings:
    """The settings memory depends on. `precision`: fp32, fp16 or bf16 (the weights' dtype on
    the GPU). `preview_size`: side of the preview images in pixels, 0 for no previews."""

    shape: str
    resolution: int
    batch_size: int = 1
    precision: str = "fp16"
    gradient_checkpointing: bool = False
    preview_size: int = 0


@dataclass(frozen=True)
class MemoryEstimate:
    settings: MemorySettings
    phases: dict[str, int]  # bytes: "training step", "latent caching", "previews"
    weights: int
    activations: int

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)

    def needs(self) -> int:
        """Free GPU memory this run needs: the peak plus the allocator's fragmentation margin."""
        return int(self.peak * (1 + CALIBRATION["fragmentation"]))


def estimate_memory(s: MemorySettings) -> MemoryEstimate:
    """Expected peak GPU memory allocated by a training run with settings `s` (see the module)."""
    if s.shape not in SHAPES:
        raise ValueError(f"memory estimate: unknown model shape {s.shape!r} (known: {', '.join(SHAPES)})")
    if s.precision not in PRECISION_BYTES:
        raise ValueError(f"memory estimate: precision must be fp32, fp16 or bf16 (got {s.precision!r})")
    shape, nbytes = SHAPES[s.shape], PRECISION_BYTES[s.precision]
    half = nbytes == 2
    weights = (shape.unet_params + sum(shape.text_params)) * nbytes
    vae = shape.vae_params * nbytes
    px = (s.resolution // 8) ** 2
    per_px = shape.act_per_px_ckpt if s.gradient_checkpointing else shape.act_per_px
    unet_act = per_px * px + shape.act_const
    text_act = sum(_text_activation(w, layers, s.gradient_checkpointing) for w, layers in shape.text_widths)
    act = s.batch_size * (unet_act + text_act) * (1.0 if half else CALIBRATION["fp32_activation_factor"])
    scale = CALIBRATION["scale"].get((_family_key(s.shape), s.gradient_checkpointing), 1.0)
    step = scale * (weights + act * (1 + CALIBRATION["backward_transient"])) + CALIBRATION["fixed_bytes"]
    full_px = s.resolution**2
    encode = weights + vae + CALIBRATION["vae_encode_bytes_per_px"] * full_px * (nbytes / 2)
    phases = {"training step": int(step), "latent caching": int(encode)}
    if s.preview_size:
        pv = s.preview_size**2
        dec_bytes = 4 if (shape.vae_fp32_decode or not half) else 2
        preview = (weights + shape.vae_params * dec_bytes + CALIBRATION["vae_decode_bytes_per_px"] * pv * dec_bytes / 2
                   + CALIBRATION["unet_infer_bytes_per_px"] * 2 * (s.preview_size // 8) ** 2 * (nbytes / 2))
        phases["previews"] = int(preview)
    return MemoryEstimate(s, phases, int(weights), int(act))


def _text_activation(width: int, layers: int, checkpointing: bool) -> float:
    """Bytes one 77-token prompt keeps in a CLIP text encoder for backward, half precision: about
    38 bytes per token and width per layer (layer norms in fp32, q/k/v/out, the 4x MLP); with
    checkpointing, each layer's input plus one layer recomputed."""
    per_layer = 77 * width * 38
    return (layers * 77 * width * 2 + per_layer) if checkpointing else layers * per_layer


def _family_key(shape: str) -> str:
    return BUILTIN_MODELS[shape].family if shape in BUILTIN_MODELS else ("sd1" if shape == "sd2" else shape)


# ---- what would make it fit -----------------------------------------------------------------------------
@dataclass(frozen=True)
class FitOption:
    """A change of settings and the estimate it gives."""

    change: str  # what to do, in the form's words
    settings: MemorySettings
    peak: int


def fit_options(s: MemorySettings, free_bytes: int) -> list[FitOption]:
    """Single changes that make the run fit in `free_bytes`, cheapest in quality first; when no
    single change is enough, the smallest combination that is (or [] when nothing fits)."""
    est = estimate_memory(s)
    if est.needs() <= free_bytes:
        return []
    candidates: list[tuple[str, MemorySettings]] = []
    if not s.gradient_checkpointing:
        candidates.append(("turn on gradient checkpointing", replace(s, gradient_checkpointing=True)))
    if s.precision == "fp32":
        candidates.append(("use mixed precision fp16 or bf16", replace(s, precision="fp16")))
    if s.batch_size > 1:
        for b in _halvings(s.batch_size):
            candidates.append((f"batch size {b} (raise gradient accumulation to keep the effective batch)",
                               replace(s, batch_size=b)))
    if s.preview_size and est.peak_phase == "previews":
        for size in _steps_down(s.preview_size, 64, 256):
            candidates.append((f"previews at {size} px", replace(s, preview_size=size)))
    for res in _steps_down(s.resolution, 64, 256):
        candidates.append((f"resolution {res}", replace(s, resolution=res)))
    fits = _first_fitting(candidates, free_bytes)
    if fits:
        return fits
    # no single change: everything that costs no quality at once, then the batch, then resolution
    combo = s
    words = []
    for change, nxt in (("gradient checkpointing on", dict(gradient_checkpointing=True)),
                        ("fp16/bf16", dict(precision="fp16" if s.precision == "fp32" else s.precision)),
                        ("batch size 1", dict(batch_size=1)),
                        ("previews at 256 px", dict(preview_size=min(s.preview_size, 256)))):
        trial = replace(combo, **nxt)
        if trial != combo:
            combo = trial
            words.append(change)
            if estimate_memory(combo).needs() <= free_bytes:
                return [FitOption(" + ".join(words), combo, estimate_memory(combo).peak)]
    for res in _steps_down(combo.resolution, 64, 256):
        trial = replace(combo, resolution=res)
        if estimate_memory(trial).needs() <= free_bytes:
            return [FitOption(" + ".join([*words, f"resolution {res}"]), trial, estimate_memory(trial).peak)]
    return []


def _first_fitting(candidates: list[tuple[str, MemorySettings]], free_bytes: int) -> list[FitOption]:
    """Each kind of change once: its mildest version that fits (the largest batch, resolution...)."""
    out: list[FitOption] = []
    kinds: set[str] = set()
    for change, settings in candidates:
        kind = change.split(" ")[0]
        if kind in kinds:
            continue
        est = estimate_memory(settings)
        if est.needs() <= free_bytes:
            kinds.add(kind)
            out.append(FitOption(change, settings, est.peak))
    return out


def _halvings(n: int) -> list[int]:
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


def _steps_down(value: int, step: int, lowest: int) -> list[int]:
    first = (value - 1) // step * step
    return list(range(first, lowest - 1, -step))


# ---- from a TrainConfig and a model spec, without loading the model --------------------------------------
def model_shape(spec: str, models_dir: Path | None = None) -> str | None:
    """The memory shape of the model `spec` names, read without loading it: a built-in's name, or
    the family of a diffusers folder (its JSON files) or a .safetensors file (its header); None
    when that cannot be told (a .ckpt, a hub id): the estimate then assumes SD 1.x and says so."""
    spec = (spec or "").strip()
    if spec.lower() in BUILTIN_MODELS:  # a built-in without its own row is counted as the toy layout of its family
        return spec.lower() if spec.lower() in SHAPES else SMALL_BUILTIN[BUILTIN_MODELS[spec.lower()].family]
    path = Path(spec).expanduser()
    if not path.exists() and models_dir is not None and (models_dir / spec).exists():
        path = models_dir / spec
    try:
        if path.is_dir():
            return folder_family(path)
        if path.is_file() and path.suffix.lower() == ".safetensors":
            shapes, _ = read_safetensors_header(path)
            return detect_family(shapes, path.name)
    except Exception:  # an unreadable file: the loader will say why; the estimate just falls back
        return None
    return None


def settings_for(config, shape: str, precision: str | None = None) -> MemorySettings:
    """MemorySettings from a TrainConfig. `precision`: what the GPU will use (mixed_precision
    "auto" is bf16 or fp16, both 2 bytes), defaulting to the config's word."""
    mp = precision or {"no": "fp32", "auto": "fp16"}.get(config.mixed_precision, config.mixed_precision)
    preview = 0
    if config.preview_every:
        preview = max(config.preview_width or config.resolution, config.preview_height or config.resolution)
    return MemorySettings(shape=shape, resolution=config.resolution, batch_size=config.batch_size, precision=mp,
                          gradient_checkpointing=config.gradient_checkpointing, preview_size=preview)


def gpu_free_bytes() -> tuple[int, int, str] | None:
    """(free, total, name) of the GPU training will use, or None without CUDA."""
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return free, total, torch.cuda.get_device_name()


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GB"


def preflight_text(config, models_dir: Path | None = None, gpu: tuple[int, int, str] | None = None,
                   on_gpu: bool | None = None) -> str:
    """One paragraph for the Train form and `app.py train`: the expected peak GPU memory and,
    when it exceeds the GPU's free memory, which settings would fit. `gpu`: (free, total, name),
    looked up when None and `on_gpu` is not False; without a GPU it says the estimate is for GPUs."""
    shape = model_shape(config.model, models_dir)
    assumed = shape is None
    s = settings_for(config, shape or "sd1")
    est = estimate_memory(s)
    what = SHAPES[s.shape].label + (" (assumed: the family is known once the model loads)" if assumed else "")
    builtin = (config.model or "").strip().lower()
    if builtin in BUILTIN_MODELS and builtin != s.shape:  # e.g. toy, sized like tiny
        what = f"{builtin}, sized like {what}"
    ckpt = "gradient checkpointing" if s.gradient_checkpointing else "no checkpointing"
    head = (f"Estimated peak GPU memory: {_gib(est.peak)} ({what}, {s.resolution} px, batch {s.batch_size}, "
            f"{s.precision}, {ckpt}; peak in {est.peak_phase}; estimate, about +-30%).")
    if gpu is None and on_gpu is not False:
        gpu = gpu_free_bytes()
    if gpu is None:
        return head + " No CUDA GPU here: the estimate is for training on a GPU."
    free, total, name = gpu
    if est.needs() <= free:
        return head + f" Fits: {_gib(free)} free of {_gib(total)} on {name}."
    options = fit_options(s, free)
    if not options:
        return head + (f" Likely too much for {name} ({_gib(free)} free of {_gib(total)}), and no setting here "
                       "makes it fit: use a GPU with more memory.")
    fixes = "; ".join(f"{o.change} (~{_gib(o.peak)})" for o in options)
    return head + f" Likely too much for {name} ({_gib(free)} free of {_gib(total)}). Would fit: {fixes}."


def calibration_factor(measured_peak: int, s: MemorySettings) -> float:
    """The `CALIBRATION["scale"]` value that makes the training-step estimate match a measured
    peak (benchmarks print it; the current scale is divided out)."""
    est = estimate_memory(s).phases["training step"] - CALIBRATION["fixed_bytes"]
    current = CALIBRATION["scale"].get((_family_key(s.shape), s.gradient_checkpointing), 1.0)
    return round(current * (measured_peak - CALIBRATION["fixed_bytes"]) / est, 3) if est > 0 else 1.0


__all__ = ["CALIBRATION", "SHAPES", "FitOption", "MemoryEstimate", "MemorySettings", "Shape", "calibration_factor",
           "estimate_memory", "fit_options", "gpu_free_bytes", "model_shape", "preflight_text", "settings_for"]
