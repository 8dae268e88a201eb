"""Captioners: turn a batch of PIL images into text. BLIP (transformers) is the first one.

A captioner is loaded once per job, used in batches on one device, and closed at the end so
its memory goes back before training starts. Loading never touches the network unless the
caller allows it: offline, a missing model is a one-line `CaptionerError` saying how to get
it, not the hub client's minutes of retries before it gives up.

torch and transformers are imported only when a model captioner is built or run: they take
seconds to import, and preprocessing without a captioner never needs them.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

DEFAULT_BLIP = "Salesforce/blip-image-captioning-base"
TINY_BLIP = "tiny-blip"  # built locally from a seed; random captions, for trying the workflow and tests
TINY_BLIP_SEED = 20221002
TINY_BLIP_VERSION = 1

# A WordPiece vocabulary we write ourselves (BERT's special tokens first, at BERT's ids where
# it matters less than that they exist). Enough words for a random caption to read as text.
_TINY_WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "of", "in", "on", "with", "and", "at",
    "photo", "picture", "drawing", "painting", "close", "up", "cat", "dog", "man", "woman", "child", "car",
    "house", "tree", "grass", "sky", "water", "red", "green", "blue", "white", "black", "small", "big",
    "sitting", "standing",
]


class CaptionerError(RuntimeError):
    """A captioner that cannot be loaded or run. The message is one line and says what to do."""


class Captioner(Protocol):
    name: str

    def caption(self, images: list[Image.Image]) -> list[str]: ...

    def close(self) -> None: ...


@dataclass
class BlipCaptioner:
    """BLIP image captioning (`BlipForConditionalGeneration`) on one device, batched."""

    name: str
    model: Any
    processor: Any
    device: str
    max_new_tokens: int = 30
    num_beams: int = 3
    prompt: str | None = None  # conditional captioning, e.g. "a photo of"
    _dtype: Any = field(default=None, repr=False)

    def caption(self, images: list[Image.Image]) -> list[str]:
        import torch

        if self.model is None:
            raise CaptionerError(f"captioner {self.name} was already closed")
        if not images:
            return []
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        kwargs: dict[str, Any] = {"images": rgb, "return_tensors": "pt"}
        if self.prompt:
            kwargs["text"] = [self.prompt] * len(rgb)
        inputs = self.processor(**kwargs).to(self.device)
        if self._dtype is not None:
            inputs["pixel_values"] = inputs["pixel_values"].to(self._dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        return [" ".join(t.split()) for t in self.processor.batch_decode(out, skip_special_tokens=True)]

    def close(self) -> None:
        """Drop the weights and give accelerator memory back (training may run next)."""
        self.model = None
        self.processor = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:  # freeing is best effort
            pass


def resolve_device(device: str | None) -> str:
    """'auto' (or None) -> 'cuda' when available, else 'mps', else 'cpu'."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return device


def load_blip(
    model_id_or_path: str | Path = DEFAULT_BLIP,
    device: str | None = "auto",
    *,
    allow_download: bool = False,
    cache_dir: str | Path | None = None,
    max_new_tokens: int = 30,
    num_beams: int = 3,
    prompt: str | None = None,
) -> BlipCaptioner:
    """Load BLIP from a local folder, the Hugging Face cache, or (only if allowed) the hub.

    `model_id_or_path == "tiny-blip"` builds (once) and loads the random tiny BLIP under
    `cache_dir` (a temporary folder when not given).
    """
    name = str(model_id_or_path).strip() or DEFAULT_BLIP
    if name == TINY_BLIP:
        folder = Path(cache_dir) / "tiny-blip" if cache_dir else _temp_tiny_dir()
        name_or_path: str | Path = build_tiny_blip(folder)
    else:
        name_or_path = Path(name).expanduser() if _looks_like_path(name) else name
        if isinstance(name_or_path, Path) and not name_or_path.is_dir():
            raise CaptionerError(f"BLIP model folder {name_or_path} does not exist")
    offline = not allow_download or os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    device = resolve_device(device)
    try:
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        processor = BlipProcessor.from_pretrained(name_or_path, local_files_only=offline)
        dtype = torch.float16 if device.startswith("cuda") else torch.float32
        model = BlipForConditionalGeneration.from_pretrained(name_or_path, local_files_only=offline, dtype=dtype)
        model.to(device).eval().requires_grad_(False)
    except OSError as e:
        raise CaptionerError(_missing_message(name, name_or_path, offline, e)) from e
    except (ValueError, KeyError) as e:
        raise CaptionerError(f"{name} is not a BLIP captioning model: {_first_line(e)}") from e
    return BlipCaptioner(name=name, model=model, processor=processor, device=device, max_new_tokens=max_new_tokens,
                         num_beams=num_beams, prompt=prompt, _dtype=dtype if dtype != torch.float32 else None)


def _looks_like_path(name: str) -> bool:
    """Hub ids look like `owner/name`; anything else that names a place on disk is a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or Path(name).expanduser().exists()


def _missing_message(name: str, where: str | Path, offline: bool, e: OSError) -> str:
    if isinstance(where, Path):
        return (f"BLIP model folder {where} is incomplete ({_first_line(e)}); it needs config.json, model.safetensors, "
                f"preprocessor_config.json and the tokenizer files")
    how = (f"download it once with `huggingface-cli download {name} --local-dir <folder>` and choose that folder, "
           f"or allow downloads (--allow-download / HF_HUB_OFFLINE=0)")
    state = "is not downloaded and downloads are off" if offline else f"could not be downloaded ({_first_line(e)})"
    return f"BLIP model {name} {state}: {how}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else e.__class__.__name__


def _temp_tiny_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"ti-studio-tiny-blip-{TINY_BLIP_VERSION}"


def build_tiny_blip(folder: str | Path) -> Path:
    """Write a random-weight tiny BLIP (47 k parameters) with our own WordPiece vocab to `folder`.

    Deterministic (fixed seed), about 200 KB, built in well under a second, reused when the
    folder already holds this version. It runs the real BLIP captioning path end to end; its
    captions are random words.
    """
    folder = Path(folder)
    marker = folder / "tiny_blip.json"
    if marker.is_file() and (folder / "config.json").is_file():
        try:
            if json.loads(marker.read_text(encoding="utf-8")).get("version") == TINY_BLIP_VERSION:
                return folder
        except (OSError, ValueError):
            pass

    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tiny-blip.", dir=folder.parent))
    try:
        vocab = work / "vocab.txt"
        vocab.write_text("\n".join(_TINY_WORDS) + "\n", encoding="utf-8")
        tok = BertTokenizer(vocab=str(vocab))
        tok.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        config = BlipConfig(
            text_config=dict(
                vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, encoder_hidden_size=32,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id,
                sep_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
            ),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                               image_size=32, patch_size=8),
            projection_dim=32,
        )
        gen = torch.random.fork_rng(devices=[])
        with gen:
            torch.manual_seed(TINY_BLIP_SEED)
            model = BlipForConditionalGeneration(config)
        processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tok)
        model.save_pretrained(work)
        processor.save_pretrained(work)
        (work / "tiny_blip.json").write_text(json.dumps({"version": TINY_BLIP_VERSION, "seed": TINY_BLIP_SEED}))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return folder


@dataclass
class NullCaptioner:
    """No captioning: every caption is empty (existing captions and prefix/suffix still apply)."""

    name: str = "none"

    def caption(self, images: list[Image.Image]) -> list[str]:
        return ["" for _ in images]

    def close(self) -> None:
        pass
