"""Helpers for UI tests: launch the real app on a free localhost port and talk to it.

`pytest_plugins = ["tests.ui_fixtures"]` also gives a module the `app` fixture: one running app
per module over a fresh data folder.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from workspace.datadir import DataDir


def free_port() -> int:
    """A port nobody listens on right now (Gradio's server_port=0 does not work)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningApp:
    demo: Any
    url: str
    ctx: Any
    data: DataDir

    def client(self, **kwargs: Any):
        from gradio_client import Client

        return Client(self.url, verbose=False, **kwargs)


@contextlib.contextmanager
def running_app(data: DataDir, **launch_kwargs: Any) -> Iterator[RunningApp]:
    from ui.app import launch
    from ui.state import AppContext

    ctx = launch_kwargs.pop("ctx", None) or AppContext(data=data.ensure(), default_model=launch_kwargs.get("model"))
    demo, (_, url, _) = launch(data, port=free_port(), block=False, ctx=ctx, **launch_kwargs)
    try:
        yield RunningApp(demo=demo, url=url.rstrip("/"), ctx=ctx, data=data)
    finally:
        demo.close()
        ctx.registry.shutdown(timeout=30)


@pytest.fixture(scope="module")
def app(tmp_path_factory, shared_data):
    """The real app on a free localhost port over a fresh data folder (the model cache shared)."""
    dd = DataDir.at(tmp_path_factory.mktemp("app") / "data").ensure()
    dd.cache.rmdir()
    dd.cache.symlink_to(shared_data.cache, target_is_directory=True)
    with running_app(dd) as running:
        yield running


def make_images(folder: Path, n: int = 3, size: int = 64, seed: int = 0, caption: str | None = None) -> list[Path]:
    """Small distinct RGB images (gradients + noise) so preprocessing and training have real input;
    with `caption`, each gets a .txt caption beside it (a dataset ready to train)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y, x = np.mgrid[0:size, 0:size]
        base = np.stack([(x * (i + 1)) % 256, (y * 3 + i * 40) % 256, (x + y) % 256], axis=-1)
        arr = (base + rng.integers(0, 30, base.shape)).clip(0, 255).astype("uint8")
        p = folder / f"img{i}.png"
        Image.fromarray(arr).save(p)
        if caption is not None:
            p.with_suffix(".txt").write_text(caption)
        out.append(p)
    return out
