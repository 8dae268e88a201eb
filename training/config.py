"""`TrainConfig`: every option of a training run in one flat dataclass.

One value, one meaning: the UI form fills it, the CLI builds it from TOML/JSON and flags, it is
saved as `settings.json` in each run folder and as `metadata["settings"]` in every embedding the
run writes, and "resume" / "restore settings" read it back. Unknown keys and bad values are
errors that name the key, so a typo in a config file never silently trains with a default.

Every rule about a value lives in `TrainConfig.validate()`, which runs before anything is queued
or loaded; the dataset's `DataOptions` is a view of some fields and borrows those rules.

Saved settings carry a schema version (`"schema": N`). `TrainConfig.from_saved` is the one loader
for anything read back (run folders, embedding metadata, resume bundles, config files): it brings
an older version up to today's field names through `TrainConfig.MIGRATIONS`, one small step per
version, so renaming a field never breaks resuming an old run or restoring an old embedding's
settings.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from workspace.atomic import atomic_write_text

LR_KINDS = ("stepped", "constant", "cosine", "linear")
CLIP_MODES = ("none", "value", "norm")
OPTIMIZERS = ("adamw",)
LATENT_SAMPLING = ("once", "deterministic", "random")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
VECTOR_SHUFFLE = ("off", "all", "trailing", "leading", "between", "progressive", "dynamic")
SNAPSHOT_FORMATS = ("safetensors", "pt", "png")
PREVIEW_SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp_2m", "pndm", "lms", "unipc")
AUTO_STOP = ("off", "likeness", "editability", "eval_loss")
DEFAULT_EDIT_PROMPTS = ("a painting of [name]", "[name] on the beach", "[name] in the snow",
                        "a drawing of [name] in a forest")


SCHEMA_KEY = "schema"  # the key that holds the schema version in saved settings

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class ConfigError(ValueError):
    """A bad setting. The message starts with the key (and the file when one was read)."""


def renamed(old: str, new: str) -> Migration:
    """A migration step for a field renamed from `old` to `new` (the value moves over unchanged)."""

    def step(values: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in values.items() if k != old}
        if old in values:
            out[new] = values[old]
        return out

    step.__name__ = f"rename_{old}_to_{new}"
    return step


@dataclass
class TrainConfig:
    """All settings of one training run. Field order is the order the UI and `--help` show them."""

    # The schema version written with saved settings; bump it when a field is renamed or changes
    # meaning, and add the step from the old version to MIGRATIONS (e.g. `1: renamed("a", "b")`).
    SETTINGS_VERSION: ClassVar[int] = 1
    # version N -> the step that turns settings of version N into version N + 1
    MIGRATIONS: ClassVar[dict[int, Migration]] = {}

    # --- what to train, on what -----------------------------------------------------------------
    embedding: str = ""  # a name in the embeddings folder or a path to an embedding file
    dataset: str = ""  # a folder of images (+ .txt captions); a name under data/datasets works too
    model: str = "tiny"  # tiny, a diffusers folder, a .safetensors/.ckpt file or a hub id
    run_name: str = ""  # run folder name; empty -> <embedding>-<YYYYmmdd-HHMMSS>

    # --- data (the training.dataset.DataOptions fields; see data_options()) ----------------------
    # Bucket sizes are given for resolution 512 and scale with `resolution`, so the defaults also
    # make sense for a 64 px tiny-model run (step 8, sides 32..128) or SDXL at 1024.
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
    density_weight: float = 0.0  # density (KDE) regulariser towards real token embeddings; 0 = off

    # --- outputs -------------------------------------------------------------------------------------
    save_every: int = 500  # snapshot + resume bundle every N steps; 0 = only at the end
    snapshot_formats: list[str] = field(default_factory=lambda: ["safetensors"])
    save_png_embeddings: bool = False
    preview_every: int = 500  # 0 = no previews
    preview_first: bool = False  # also preview the untrained embedding when a run starts (not on resume)
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

    # --- CLIP scores, the best step, auto-stop (training.scores, training.best_step) -------------------
    score_every: int = 0  # likeness + editability every N steps (it generates images); 0 = off
    clip_model: str = ""  # the CLIP that scores (models.clip); empty = the first one found
    score_prompts: list[str] = field(default_factory=lambda: ["a photo of [name]"])  # likeness images
    edit_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_EDIT_PROMPTS))
    class_word: str = ""  # edit prompts are compared with [name] replaced by this; empty = the init text
    score_seeds: list[int] = field(default_factory=lambda: [0, 1])
    score_steps: int = 20  # sampling steps of each scored image
    best_threshold: float = 0.9  # the suggested step keeps at least this share of the untrained editability
    auto_stop: str = "off"  # stop when this score has not improved for auto_stop_patience evaluations
    auto_stop_patience: int = 3

    # ------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The settings as saved (settings.json, embedding metadata, resume bundles): every field,
        after the schema version they are written in."""
        return {SCHEMA_KEY: self.SETTINGS_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str | None = None) -> "TrainConfig":
        """Build and validate settings given as today's fields (a form, flags, `to_dict()`).

        A schema key, when present, is honoured (`to_dict()` writes one); without it the values
        are today's. `source` (a file name) prefixes error messages."""
        if isinstance(values, dict):
            values = {SCHEMA_KEY: cls.SETTINGS_VERSION, **values}
        return cls.from_saved(values, source=source)

    @classmethod
    def from_saved(cls, values: dict[str, Any], *, source: str | None = None,
                   ignore_unknown: bool = False) -> "TrainConfig":
        """The one loader for settings read back from disk or metadata, of any schema version.

        Settings without a schema key are version 1 (written before versions were). Older
        versions go through `migrate` first. `ignore_unknown` drops keys this config does not have
        (an embedding made by another tool stores its own settings under the same metadata key);
        otherwise an unknown key is an error naming it."""
        values = cls.migrate(values, source=source)
        prefix = f"{source}: " if source else ""
        known = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key == SCHEMA_KEY:
                continue
            if key not in known:
                if ignore_unknown:
                    continue
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

    @classmethod
    def migrate(cls, values: dict[str, Any], *, source: str | None = None) -> dict[str, Any]:
        """Saved settings of any version -> the same settings at `SETTINGS_VERSION` (schema key set).

        Only the steps in `MIGRATIONS` touch the values; keys they do not know pass through (the
        trainer keeps its own bookkeeping beside the fields in a resume bundle). No schema key means
        version 1. A version newer than this program's is an error: guessing could train with
        settings it misreads."""
        prefix = f"{source}: " if source else ""
        if not isinstance(values, dict):
            raise ConfigError(f"{prefix}expected a table of settings, got {type(values).__name__}")
        version = values.get(SCHEMA_KEY, 1)
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ConfigError(f"{prefix}{SCHEMA_KEY}: expected a version number (1 or more), got {version!r}")
        if version > cls.SETTINGS_VERSION:
            raise ConfigError(f"{prefix}{SCHEMA_KEY}: these settings are version {version}, newer than this "
                              f"program reads (up to {cls.SETTINGS_VERSION}); update the program to use them")
        out = {k: v for k, v in values.items() if k != SCHEMA_KEY}
        for v in range(version, cls.SETTINGS_VERSION):
            out = cls.MIGRATIONS[v](out)
        return {SCHEMA_KEY: cls.SETTINGS_VERSION, **out}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some settings changed (unknown keys are errors)."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        """A TOML/JSON config file or saved settings (a run's settings.json, embedding metadata
        with a "settings" table), of any schema version."""
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
        return cls.from_saved(values, source=path.name)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.suffix.lower() == ".toml":
            import tomli_w

            return atomic_write_text(path, tomli_w.dumps(self.to_dict()))
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Every rule about the settings, checked before anything is queued or loaded.

        Types, ranges and choices; the lr and clip schedules are parsed where max_steps is known.
        Raises ConfigError naming the first bad key."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        _choice("lr_kind", self.lr_kind, LR_KINDS)
        _choice("clip_mode", self.clip_mode, CLIP_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("latent_sampling", self.latent_sampling, LATENT_SAMPLING)
        _choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _choice("vector_shuffle", self.vector_shuffle, VECTOR_SHUFFLE)
        _choice("preview_scheduler", self.preview_scheduler, PREVIEW_SCHEDULERS)
        _choice("auto_stop", self.auto_stop, AUTO_STOP)
        for fmt in self.snapshot_formats:
            _choice("snapshot_formats", fmt, SNAPSHOT_FORMATS)
        for key in ("batch_size", "grad_accum", "repeats", "preview_steps", "min_bucket", "max_bucket",
                    "clip_skip"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be at least 1 (got {getattr(self, key)})")
        # pixel sizes reach the VAE, which halves them three times
        if self.resolution < 16 or self.resolution % 8:
            raise ConfigError(f"resolution: must be a multiple of 8, at least 16 (got {self.resolution})")
        if self.bucket_step < 8 or self.bucket_step % 8:
            raise ConfigError(f"bucket_step: must be a multiple of 8, at least 8 (got {self.bucket_step})")
        for key in ("max_steps", "more_steps", "warmup_steps", "keep_tags", "save_every", "preview_every",
                    "eval_every", "eval_images", "nan_patience", "not_learning_steps", "preview_width",
                    "preview_height", "weight_decay", "min_lr", "not_learning_threshold", "preview_cfg",
                    "density_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative (got {getattr(self, key)})")
        for key in ("tag_dropout", "flip_p", "shuffle_prob"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ConfigError(f"{key}: must be between 0 and 1 (got {getattr(self, key)})")
        self._validate_scores()
        if not math.isfinite(self.density_weight):
            raise ConfigError(f"density_weight: must be a finite number (got {self.density_weight})")
        if self.nan_patience < 1:
            raise ConfigError("nan_patience: must be at least 1")
        if self.min_bucket > self.max_bucket:
            raise ConfigError(f"min_bucket: {self.min_bucket} is larger than max_bucket {self.max_bucket}")
        if self.filename_regex:
            try:
                re.compile(self.filename_regex)
            except re.error as e:
                raise ConfigError(f"filename_regex: {self.filename_regex!r} is not a valid regular expression: "
                                  f"{e}") from None
        if not str(self.lr).strip():
            raise ConfigError("lr: empty learning rate")
        if self.run_name and (Path(self.run_name).name != self.run_name or self.run_name.startswith(".")):
            raise ConfigError(f"run_name: {self.run_name!r} must be a plain folder name")
        self.schedules(max_steps=max(self.max_steps, 1), cur_step=0)

    def _validate_scores(self) -> None:
        """The CLIP score and auto-stop settings: prompts name the embedding, the chosen auto-stop
        score is computed at all."""
        for key in ("score_every", "score_steps", "auto_stop_patience"):
            if getattr(self, key) < (0 if key == "score_every" else 1):
                raise ConfigError(f"{key}: must be at least {0 if key == 'score_every' else 1} "
                                  f"(got {getattr(self, key)})")
        if not 0.0 <= self.best_threshold <= 1.0:
            raise ConfigError(f"best_threshold: must be between 0 and 1 (got {self.best_threshold})")
        for key in ("score_prompts", "edit_prompts"):
            for prompt in getattr(self, key):
                if "[name]" not in prompt:
                    raise ConfigError(f"{key}: {prompt!r} does not contain [name], where the embedding goes")
        if self.score_every and (not self.score_prompts or not self.edit_prompts or not self.score_seeds):
            raise ConfigError("score_every: scores need at least one of score_prompts, edit_prompts and score_seeds")
        needs = {"likeness": "score_every", "editability": "score_every", "eval_loss": "eval_every"}
        if self.auto_stop != "off" and not getattr(self, needs[self.auto_stop]):
            raise ConfigError(f"auto_stop: {self.auto_stop} is never computed; set {needs[self.auto_stop]} "
                              "above 0 (how often it is evaluated)")

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
        """The dataset options (training.dataset.DataOptions): a view of the matching fields.

        Imported here because training.dataset pulls in torch and PIL, which reading a config
        does not need (the CLI checks a config before it loads anything heavy)."""
        from training.dataset import DataOptions

        return DataOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DataOptions)})


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _check_type(key: str, value: Any, hint: Any) -> None:
    """A field holds its declared type: `from_dict` converts loaded values, and this catches a
    config built directly in code with a wrong one (1.5 repeats, "64" as a resolution)."""
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        for v in value:
            _check_type(key, v, item)
        return
    allowed = (int, float) if hint is float else (hint,)  # a whole number is a fine float
    if not isinstance(value, allowed) or (isinstance(value, bool) and hint is not bool):
        raise ConfigError(f"{key}: expected {_TYPE_WORDS[hint]}, got {value!r}")


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
