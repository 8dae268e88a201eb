"""`TrainConfig`: every option of a training run in one flat dataclass.

One value, one meaning: the UI form fills it, the CLI builds it from TOML/JSON and flags, it is
saved as `settings.json` in each run folder and as `metadata["settings"]` in every embedding the
run writes, and "resume" / "restore settings" read it back. Unknown keys and bad values are
errors that name the key, so a typo in a config file never silently trains with a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workspace.atomic import atomic_write_text

LR_KINDS = ("stepped", "constant", "cosine", "linear")
CLIP_MODES = ("none", "value", "norm")
OPTIMIZERS = ("adamw",)
LATENT_SAMPLING = ("once", "deterministic", "random")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
VECTOR_SHUFFLE = ("off", "all", "trailing", "leading", "between", "progressive", "dynamic")
SNAPSHOT_FORMATS = ("safetensors", "pt", "png")
PREVIEW_SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms", "unipc")


class ConfigError(ValueError):
    """A bad setting. The message starts with the key (and the file when one was read)."""


@dataclass
class TrainConfig:
    """All settings of one training run. Field order is the order the UI and `--help` show them."""

    # --- what to train, on what -----------------------------------------------------------------
    embedding: str = ""  # a name in the embeddings folder or a path to an embedding file
    dataset: str = ""  # a folder of images (+ .txt captions); a name under data/datasets works too
    model: str = "tiny"  # tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id
    run_name: str = ""  # run folder name; empty -> <embedding>-<YYYYmmdd-HHMMSS>

    # --- data (the training.dataset.DataOptions fields; see data_options()) ----------------------
    template: str = "subject_filewords"
    shuffle_tags: bool = False
    tag_dropout: float = 0.0
    keep_tags: int = 0
    repeats: int = 1
    flip_p: float = 0.0
    resolution: int = 512
    bucketing: bool = False
    no_upscale: bool = True
    alpha_weight: bool = False
    filename_regex: str = ""
    join_string: str = " "
    bucket_step: int = 64
    min_bucket: int = 256
    max_bucket: int = 1024

    # --- optimisation ------------------------------------------------------------------------------
    lr: str = "0.005"  # A1111 stepped syntax for lr_kind "stepped"; a single rate for the others
    lr_kind: str = "stepped"
    warmup_steps: int = 0
    min_lr: float = 0.0
    max_steps: int = 3000  # absolute target, counted from the embedding's stored step
    more_steps: int = 0  # > 0: train this many steps past the stored step (max_steps is then ignored)
    batch_size: int = 1
    grad_accum: int = 1
    clip_mode: str = "none"
    clip_value: str = "0.1"  # same schedule syntax as lr
    optimizer: str = "adamw"
    weight_decay: float = 0.0  # 0 for embeddings (A1111 since 2022-11): decay pulls vectors to 0
    latent_sampling: str = "deterministic"
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    seed: int = 0
    vector_shuffle: str = "off"
    shuffle_prob: float = 1.0
    clip_skip: int = 1

    # --- outputs -------------------------------------------------------------------------------------
    save_every: int = 500  # snapshot + resume bundle every N steps; 0 = only at the end
    snapshot_formats: list[str] = field(default_factory=lambda: ["safetensors"])
    save_png_embeddings: bool = False
    preview_every: int = 500  # 0 = no previews
    preview_prompts: list[str] = field(default_factory=list)  # empty -> first template line
    preview_negative: str = ""
    preview_seeds: list[int] = field(default_factory=lambda: [0])
    preview_steps: int = 20
    preview_cfg: float = 7.0
    preview_scheduler: str = "default"
    preview_width: int = 0  # 0 = training resolution
    preview_height: int = 0
    tensorboard: bool = False
    eval_every: int = 0  # deterministic evaluation loss every N steps; 0 = off
    eval_images: int = 4
    nan_patience: int = 3  # this many non-finite steps in a row stop the run
    not_learning_steps: int = 200  # warn if the vectors have not moved after this many steps (0 = off)
    not_learning_threshold: float = 1e-4  # relative change ||v - v0|| / ||v0|| counted as "moved"

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None) -> "TrainConfig":
        """Build and validate. `source` (a file name) prefixes error messages."""
        prefix = f"{source}: " if source else ""
        if not isinstance(values, dict):
            raise ConfigError(f"{prefix}expected a table of settings, got {type(values).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(str(key).replace("-", "_"), list(known), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{prefix}unknown setting {key!r}{hint}")
            try:
                kwargs[key] = _coerce(value, hints[key])
            except (TypeError, ValueError) as e:
                raise ConfigError(f"{prefix}{key}: {e}") from None
        config = cls(**kwargs)
        try:
            config.validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix}{e}") from None
        return config

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some settings changed (unknown keys are errors)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
        try:
            values = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path.name}: not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {e}") from None
        if isinstance(values, dict) and "settings" in values and isinstance(values["settings"], dict):
            values = values["settings"]  # embedding metadata / run summaries nest them
        return cls.from_dict(values, source=path.name)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() == ".toml":
            import tomli_w

            return atomic_write_text(path, tomli_w.dumps(self.to_dict()))
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check ranges and choices; the lr and clip schedules are parsed where max_steps is known."""
        _choice("lr_kind", self.lr_kind, LR_KINDS)
        _choice("clip_mode", self.clip_mode, CLIP_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("latent_sampling", self.latent_sampling, LATENT_SAMPLING)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("vector_shuffle", self.vector_shuffle, VECTOR_SHUFFLE)
        _choice("preview_scheduler", self.preview_scheduler, PREVIEW_SCHEDULERS)
        for fmt in self.snapshot_formats:
            _choice("snapshot_formats", fmt, SNAPSHOT_FORMATS)
        for key in ("batch_size", "grad_accum", "repeats", "resolution", "preview_steps", "bucket_step",
                    "min_bucket", "max_bucket", "clip_skip"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1 (got {getattr(self, key)})")
        for key in ("max_steps", "more_steps", "warmup_steps", "keep_tags", "save_every", "preview_every",
                    "eval_every", "eval_images", "nan_patience", "not_learning_steps", "preview_width",
                    "preview_height", "weight_decay", "min_lr", "not_learning_threshold", "preview_cfg"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative (got {getattr(self, key)})")
        for key in ("tag_dropout", "flip_p", "shuffle_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}: must be between 0 and 1 (got {getattr(self, key)})")
        if self.nan_patience < 1:
            raise ConfigError("nan_patience: must be at least 1")
        if self.min_bucket > self.max_bucket:
            raise ConfigError(f"min_bucket: {self.min_bucket} is larger than max_bucket {self.max_bucket}")
        if not str(self.lr).strip():
            raise ConfigError("lr: empty learning rate")
        if self.run_name and (Path(self.run_name).name != self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"run_name: {self.run_name!r} must be a plain folder name")
        self.schedules(max_steps=max(self.max_steps, 1), cur_step=0)

    def schedules(self, max_steps: int, cur_step: int):
        """The lr schedule and the clip schedule (or None), as training.schedule builds them.

        Bad syntax becomes a ConfigError naming `lr` or `clip_value` before any work starts.
        """
        from training.schedule import ScheduleError, build_clip_schedule, build_schedule

        try:
            lr = build_schedule(self.lr_kind, str(self.lr), max_steps, cur_step, self.warmup_steps, self.min_lr)
        except ScheduleError as e:
            raise ConfigError(f"lr: {e}") from None
        clip = None
        if self.clip_mode != "none":
            try:
                clip = build_clip_schedule(str(self.clip_value), max_steps, cur_step)
            except ScheduleError as e:
                raise ConfigError(f"clip_value: {e}") from None
        return lr, clip

    def data_options(self):
        """The dataset options (training.dataset.DataOptions) taken from the matching fields."""
        from training.dataset import DataOptions

        names = {f.name for f in dataclasses.fields(DataOptions)}
        return DataOptions(**{k: v for k, v in self.to_dict().items() if k in names})


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")


def _coerce(value: Any, hint: Any) -> Any:
    """Check a loaded value against a field's type; ints are accepted where floats are expected,
    and numbers where the schedule strings (lr, clip_value) are expected."""
    origin = typing.get_origin(hint)
    if origin in (list, types.GenericAlias) or origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, (str, int, float)):
            value = [value]  # a single prompt / seed / format is a list of one
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return [_coerce(v, item) for v in value]
    if hint is bool:
        if not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise TypeError(f"expected a whole number, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise TypeError(f"expected text, got {value!r}")
        return str(value)
    return value
