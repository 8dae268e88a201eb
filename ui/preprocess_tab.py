"""Preprocess tab: images in (folder drop, files, folder picker, server folder), dataset out."""

from __future__ import annotations

import gradio as gr

from ui.common import Refresh
from ui.state import AppContext


def build(ctx: AppContext) -> Refresh:
    gr.Markdown("Preprocessing arrives with the preprocessing core.")
    return Refresh(lambda: None, [], [])
