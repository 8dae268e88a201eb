"""The Gradio app shell (tabs are filled in as the core lands)."""

from __future__ import annotations

from workspace.datadir import DataDir


def build(data: DataDir):
    import gradio as gr

    with gr.Blocks(title="Textual Inversion Studio", analytics_enabled=False) as demo:
        gr.Markdown("# Textual Inversion Studio\nCreate, train and export textual-inversion embeddings.")
        gr.Markdown(f"Data folder: `{data.root}`")
    return demo


def launch(data: DataDir, *, port: int = 7860, model: str | None = None, listen: bool = False,
           auth: str | None = None, insecure: bool = False, block: bool = True):
    if listen and not auth and not insecure:
        raise ValueError("--listen exposes the app to the network: give --auth user:password (or --insecure)")
    creds = None
    if auth:
        user, _, pw = auth.partition(":")
        if not user or not pw:
            raise ValueError("--auth must look like user:password")
        creds = (user, pw)
    if listen and not auth:
        print("WARNING: serving on all interfaces without a password (--insecure)")
    demo = build(data)
    demo.queue()
    return demo.launch(
        server_name="0.0.0.0" if listen else "127.0.0.1",
        server_port=port,
        auth=creds,
        allowed_paths=[str(data.root)],
        prevent_thread_lock=not block,
        footer_links=[],
        run_history=False,
        enable_monitoring=False,
        quiet=not block,
    )
