"""Train tab: pick an embedding and a dataset, set options, start, and watch the run live."""

from __future__ import annotations

import gradio as gr

from ui.common import Refresh
from ui.state import AppContext


def build(ctx: AppContext, demo=None) -> Refresh:
    gr.Markdown("Training arrives with the training core.")
    return Refresh(lambda: None, [], [])
