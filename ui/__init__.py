"""Gradio Blocks. One module per tab; they only wire widgets to core functions."""
