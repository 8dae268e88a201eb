"""Base models: the built-in tiny model, diffusers folders, single-file checkpoints, hub ids."""

from models.base import BaseModel, ModelError

__all__ = ["BaseModel", "ModelError"]
