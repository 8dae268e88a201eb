"""Small pieces shared by CLI commands."""

from __future__ import annotations

import json
from typing import Any

from workspace.datadir import DataDir


def data_dir(args) -> DataDir:
    return DataDir.at(args.data_dir).ensure()


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str, ensure_ascii=False))
