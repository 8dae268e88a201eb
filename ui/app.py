"""The Gradio app shell: one page, six tabs, launched on localhost with private settings.

Launch settings are the security boundary of a local tool: bind to 127.0.0.1 unless asked, demand a
password before binding to the network, turn off run history / monitoring / analytics, and serve
files only from the data folder (plus Gradio's own temp folder).

Gradio and the tabs are imported inside `build`, so `launch_settings` refuses bad flags before
the seconds that importing them takes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ui import gradio_fixes
from workspace.datadir import DataDir

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
MAX_UPLOAD = "50mb"
TITLE = "Textual Inversion Studio"

CSS = """
#ti-header h1 { margin-bottom: 0; }
#ti-header p { margin: 0; }
.ti-status textarea { font-family: var(--font-mono); }
.ti-hidden { display: none !important; }
.ti-log { max-height: 9.5em; overflow-y: auto; margin: 0; padding: 0.2em 0.6em; list-style: none;
          font-size: var(--text-sm); border: 1px solid var(--border-color-primary); border-radius: 4px; }
.ti-log li { margin: 0.1em 0; }
.ti-log li.ti-warn { color: var(--color-accent); font-weight: 600; }
.ti-log li.ti-err { color: #dc2626; font-weight: 600; }
.ti-chart { width: 100%; height: 220px; display: block; }
/* the Train tab's live slots (written by static/train_live.js); an empty log or heat map takes no room */
.ti-status-line p { margin: 0.2em 0; }
#train_log:has(.ti-live:empty), #train_heatmap:has(.ti-live:empty) { display: none; }
.ti-chart-small { height: 170px; }
/* the Train tab's per-layer norm heat map (ui/layer_heatmap.py) */
.ti-heatmap { font-size: 12px; }
.ti-heat-tables { display: flex; gap: 12px; flex-wrap: wrap; max-height: 360px; overflow: auto; }
.ti-heat { border-collapse: collapse; margin: 0; width: auto; }
.ti-heat caption { text-align: left; font-size: 11px; opacity: 0.8; }
.ti-heat th, .ti-heat td { padding: 1px 6px; font-size: 11px; border: 1px solid rgba(128,128,128,0.2); }
.ti-heat-row { text-align: right; white-space: nowrap; font-weight: normal; }
.ti-heat-cell { text-align: center; font-variant-numeric: tabular-nums; min-width: 3.5em; }
.ti-heat-legend { display: inline-block; width: 80px; height: 9px; vertical-align: middle; border-radius: 2px; }
/* tables whose rows are picked, never edited: no cell edit frame or menu, the row lights up */
.ti-rows .cell-menu-button { display: none !important; }
.ti-rows .cell-selected { box-shadow: none !important; }
.ti-rows tr:has(.cell-selected) td { background: var(--color-accent-soft); }
.ti-rows td { cursor: pointer; }
.ti-rows th, .ti-rows th * { word-break: keep-all !important; overflow-wrap: normal !important; hyphens: none; }
"""


@dataclass(frozen=True)
class LaunchSettings:
    """What `launch` passes to Gradio, worked out (and checked) from the command-line flags."""

    server_name: str
    server_port: int
    auth: tuple[str, str] | None
    warning: str | None = None


def launch_settings(port: int = 7860, listen: bool = False, auth: str | None = None,
                    insecure: bool = False) -> LaunchSettings:
    """Refuse to expose the app to the network without a password unless told so explicitly."""
    creds = None
    if auth:
        user, _, pw = auth.partition(":")
        if not user or not pw:
            raise ValueError("--auth must look like user:password")
        creds = (user, pw)
    warning = None
    if listen and creds is None:
        if not insecure:
            raise ValueError("--listen makes the app reachable from the network: give --auth user:password "
                             "(or --insecure to allow anyone on the network in)")
        warning = ("WARNING: serving on all interfaces WITHOUT a password (--insecure): anyone who can reach "
                   f"this machine on port {port} can use the app and read its data folder.")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"--port {port} is not a valid port")
    return LaunchSettings(server_name="0.0.0.0" if listen else "127.0.0.1", server_port=int(port),
                          auth=creds, warning=warning)


def drop_handler_js() -> str:
    """The page's own scripts, run once on page load: the folder-drop handler (Gradio 6.31 ignores
    dropped folders), the Train tab's charts (fed with only the new points) and its poller."""
    parts = [(STATIC / name).read_text(encoding="utf-8")
             for name in ("folder_drop.js", "train_charts.js", "train_live.js")]
    # Gradio runs `js` as one function body: wrap each file so each keeps its own scope.
    return "() => {\n" + "\n".join(f"({_as_function(p)})();" for p in parts) + "\n}"


def _as_function(source: str) -> str:
    """A script file as a function expression: a file that is already one `() => {...}` stays so."""
    stripped = source.strip()
    return stripped if stripped.startswith("() =>") or stripped.startswith("function") else f"() => {{\n{source}\n}}"


def build(data: DataDir, *, model: str | None = None, ctx=None):
    """Build the Blocks app. `ctx` may be passed in so tests and benchmarks share its registry."""
    import gradio as gr

    from ui.state import AppContext

    ctx = ctx or AppContext(data=data.ensure(), default_model=model)
    with gr.Blocks(title=TITLE, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        also = [f"`{p}`" for p in (*ctx.data.models_dirs, *ctx.data.embeddings_dirs)]
        gr.Markdown(f"# {TITLE}\nCreate, train, inspect and export textual-inversion embeddings. "
                    f"Data folder: `{ctx.data.root}`" + (f" · also reading {', '.join(also)}" if also else "")
                    + (f" · new embeddings go to `{ctx.data.embeddings}`" if ctx.data.embeddings_dirs else ""),
                    elem_id="ti-header")
        with gr.Tabs(elem_id="tabs"):
            _add_tabs(gr, ctx, demo)
    demo.ti_context = ctx  # type: ignore[attr-defined]  # for tests and benchmarks
    return demo


def _add_tabs(gr, ctx, demo) -> None:
    from ui import create_tab, embeddings_tab, evaluate_tab, generate_tab, preprocess_tab, train_tab

    with gr.Tab("Create", id="create") as t_create:
        create = create_tab.build(ctx)
    with gr.Tab("Preprocess", id="preprocess") as t_pre:
        pre = preprocess_tab.build(ctx)
    with gr.Tab("Train", id="train") as t_train:
        train = train_tab.build(ctx, demo)
    with gr.Tab("Evaluate", id="evaluate") as t_eval:
        evaluate = evaluate_tab.build(ctx)
    with gr.Tab("Embeddings", id="embeddings") as t_emb:
        emb = embeddings_tab.build(ctx)
    with gr.Tab("Generate", id="generate") as t_gen:
        gen = generate_tab.build(ctx)

    # Lists go stale when another tab (or the CLI) changes the data folder: refresh on tab select.
    t_create.select(lambda m, st: (create_tab.refresh_models(ctx, m), create_tab.refresh_start_choices(ctx, st)),
                    [create.model, create.start_from], [create.model, create.start_from],
                    api_visibility="private", show_progress="hidden")
    t_pre.select(pre.refresh_fn, pre.refresh_inputs, pre.refresh_outputs, api_visibility="private",
                 show_progress="hidden")
    t_train.select(train.refresh_fn, train.refresh_inputs, train.refresh_outputs, api_visibility="private",
                   show_progress="hidden")
    # The Preprocess tab polls its job once a second with a gr.Timer, only while it is shown (the
    # browser already stops timers in a hidden window): polling costs CPU a run on a small machine
    # needs. The Train tab's own poller (static/train_live.js) runs only while that tab is shown and
    # the window visible; selecting the tab starts it (and redraws the charts).
    timers = [(t_pre, pre.timer)]
    for tab in (t_create, t_pre, t_train, t_eval, t_emb, t_gen):
        def only(shown=tab):
            updates = [gr.Timer(active=owner is shown) for owner, _ in timers]
            return updates if len(updates) > 1 else updates[0]  # Gradio takes one output's value bare

        js = ("() => { window.tiLive && window.tiLive.now(); "
              "setTimeout(() => window.tiCharts && window.tiCharts.redraw(), 50); }") if tab is t_train else None
        tab.select(only, None, [timer for _, timer in timers], api_visibility="private", show_progress="hidden",
                   js=js)
    t_emb.select(emb.refresh_fn, emb.refresh_inputs, emb.refresh_outputs, api_visibility="private",
                 show_progress="hidden")
    t_eval.select(evaluate.refresh.fn, evaluate.refresh.inputs, evaluate.refresh.outputs, api_visibility="private",
                  show_progress="hidden")
    t_gen.select(gen.refresh_fn, gen.refresh_inputs, gen.refresh_outputs, api_visibility="private",
                 show_progress="hidden")
    create.created.change(emb.refresh_fn, emb.refresh_inputs, emb.refresh_outputs, api_visibility="private",
                          show_progress="hidden")


def launch(data: DataDir, *, port: int = 7860, model: str | None = None, listen: bool = False,
           auth: str | None = None, insecure: bool = False, block: bool = True, ctx=None):
    """Start the server. Returns Gradio's (app, local_url, share_url) when `block` is False."""
    settings = launch_settings(port, listen, auth, insecure)
    if settings.warning:
        print(settings.warning, flush=True)
        log.warning(settings.warning)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    data = data.ensure()
    demo = build(data, model=model, ctx=ctx)
    demo.queue(default_concurrency_limit=4, max_size=64)
    result = demo.launch(
        server_name=settings.server_name,
        server_port=settings.server_port,
        auth=settings.auth,
        allowed_paths=[str(data.root)],
        max_file_size=MAX_UPLOAD,
        prevent_thread_lock=not block,
        footer_links=[],
        run_history=False,
        enable_monitoring=False,
        show_error=False,
        quiet=not block,
        css=CSS,
        js=drop_handler_js(),
        app_kwargs={"routes": gradio_fixes.routes()},  # before Gradio's own routes (ui/gradio_fixes.py)
    )
    return demo, result
