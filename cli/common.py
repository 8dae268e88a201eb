"""Small pieces shared by CLI commands."""

from __future__ import annotations

import json
from typing import Any

from workspace.datadir import DataDir


def data_dir(args) -> DataDir:
    """The data folder of the command line, with the other installs' folders it names."""
    return DataDir.at(args.data_dir, models_dirs=getattr(args, "models_dir", None) or (),
                      embeddings_dirs=getattr(args, "embeddings_dir", None) or ()).ensure()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))
