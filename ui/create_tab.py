"""Create tab: pick a base model, name the embedding, see its tokens and prompt budget, create it.

The plan (which init tokens fill which vectors, how much of the 75-token prompt it takes) is shown
live as you type, before anything is written, because a wrong init text or vector count is the
most common silent mistake.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from embeddings.create import check_start, create_embedding, plan_embedding, start_from_embedding
from embeddings.embedding import Embedding, EmbeddingError
from embeddings.formats import save_embedding
from embeddings.kinds import KINDS, get_kind
from ui.common import fail, user_errors
from ui.state import AppContext


@dataclass
class CreateTab:
    model: gr.Dropdown
    start_from: gr.Dropdown  # its choices (the library's names) are re-read when the tab is shown
    result: gr.Markdown
    created: gr.Textbox  # name of the last created embedding: other tabs refresh on its change


MODEL_INFO = ("Built in: toy (learned shapes and colours: a first run) and tiny (random weights). Or type a "
              "diffusers folder, a .safetensors/.ckpt file, or a hub id.")


def model_dropdown(ctx: AppContext, label: str, elem_id: str, info: str | None = MODEL_INFO) -> gr.Dropdown:
    choices = [(c.label, c.spec) for c in ctx.model_choices()]
    return gr.Dropdown(
        choices=choices,
        value=ctx.default_model_spec(),
        allow_custom_value=True,
        label=label,
        info=info,
        elem_id=elem_id,
        min_width=160,
    )


def refresh_models(ctx: AppContext, current: str | None):
    choices = [(c.label, c.spec) for c in ctx.model_choices()]
    return gr.Dropdown(choices=choices, value=current or ctx.default_model_spec())


def _start(ctx: AppContext, start_from: str) -> Embedding | None:
    """The library embedding the form starts from (None: start from the init text)."""
    start_from = (start_from or "").strip()
    if not start_from:
        return None
    return ctx.library(None).resolve(start_from).require_embedding()


def describe_plan(ctx: AppContext, model_spec: str, name: str, init_text: str, vectors: float, mode: str,
                  start_from: str = "") -> str:
    """Markdown shown under the form; problems appear inline instead of as pop-ups."""
    if not (name or "").strip():
        return "Type a name: it is the word you will put in prompts."
    try:  # every SD family shares CLIP's vocabulary: no need to load the model to count tokens
        base = _start(ctx, start_from)
        if base is None:
            plan = plan_embedding(ctx.tokenizer(), name, init_text, int(vectors), mode)  # type: ignore[arg-type]
            lines = [f"- {line}" for line in plan.describe()]
            name = plan.name
        else:
            check_start(base)
            lines = [f"- Starts from **{base.name}**: its {base.num_vectors} vector(s), trained to step {base.step} "
                     "(init text, vectors and initial vectors are not used)."]
    except EmbeddingError as e:
        return f"**Cannot create yet:** {e}"
    existing = ctx.existing_embedding(name.strip())
    if existing is not None:
        lines.append(f"- **{existing.name} already exists**: tick *Overwrite* to replace it.")
    return "\n".join(lines)


def create(ctx: AppContext, model_spec: str, name: str, init_text: str, vectors: float, mode: str,
           fmt: str, overwrite: bool, kind: str = "standard", options: dict[str, str] | None = None,
           start_from: str = "") -> tuple[str, str]:
    """Create the embedding the form describes; `start_from`: a standard library embedding whose
    vectors it starts from instead of the init text (to refine a trained one as another kind)."""
    name = (name or "").strip()
    if not name:
        raise fail("Give the embedding a name first")
    chosen = get_kind(kind or "standard")
    if chosen.name != "standard" and fmt != "safetensors":
        raise fail(f"A {chosen.label} embedding is kept whole only in .safetensors; choose safetensors "
                   "(export to .pt later for other tools)")
    base = _start(ctx, start_from)
    if base is None:
        plan_embedding(ctx.tokenizer(), name, init_text, int(vectors), mode)  # type: ignore[arg-type]  # fail fast
    existing = ctx.existing_embedding(name)
    if existing is not None and not overwrite:
        raise fail(f"{existing.name} already exists in the library; tick Overwrite to replace it")
    if base is not None and base.name == name:
        raise fail(f"{name} would replace the embedding it starts from; give the new one another name")
    model = ctx.model(model_spec)
    if base is None:
        emb = create_embedding(model, name, init_text, int(vectors), mode)  # type: ignore[arg-type]
    else:
        emb = start_from_embedding(base, name, model)
    emb = chosen.make(emb, model.unet, model=model,
                      **{o.name: (options or {}).get(o.name, o.default) for o in chosen.options})
    target = ctx.data.embeddings / f"{name}.{fmt or 'safetensors'}"
    path = save_embedding(emb, target)
    if existing is not None and existing != path:
        existing.unlink(missing_ok=True)  # replaced by the new file in another format
    widths = ", ".join(f"{key} {width}" for key, width in emb.widths.items())
    details = chosen.describe(emb)
    groups, anchors = len(details.get("groups", [])), len(details.get("anchors", []))
    what = (f"{chosen.label}, " + (f"{anchors} anchor sets, " if anchors else "")
            + (f"{groups} layer groups, " if groups else "")) if groups or anchors else ""
    start = f", starting from {base.name} (step {base.step})" if base is not None else ""
    msg = (f"Created **{emb.name}** ({what}{emb.num_vectors} vector(s), width {widths}{start}) on {model.label}: "
           f"`{path.name}`. Train it in the Train tab.")
    return msg, emb.name


def build(ctx: AppContext) -> CreateTab:
    gr.Markdown("Create a new embedding. Its vectors start from the init text's token embeddings.")
    with gr.Row():
        with gr.Column(scale=3):
            model = model_dropdown(ctx, "Base model", "create_model")
            name = gr.Textbox(label="Name (the word you use in prompts)", placeholder="my-cat", elem_id="create_name")
            init_text = gr.Textbox(label="Initialization text", value="*", elem_id="create_init",
                                   info="words close to the concept, e.g. 'cat' or 'oil painting'")
            vectors = gr.Slider(1, 75, value=1, step=1, label="Vectors per token", elem_id="create_vectors")
            with gr.Row():
                mode = gr.Radio([("From init text", "text"), ("Zeros", "zeros"), ("Random", "random")],
                                value="text", label="Initial vectors", elem_id="create_mode")
                fmt = gr.Radio(["safetensors", "pt"], value="safetensors", label="File format", elem_id="create_fmt")
            kind = gr.Radio([(k.label, k.name) for k in KINDS.values()], value="standard", label="Kind",
                            info=" · ".join(f"{k.label}: {k.summary}" for k in KINDS.values()), elem_id="create_kind")
            kind_options = {o.name: (gr.Dropdown(list(o.choices), value=o.default, label=o.label, info=o.help,
                                                 visible=False, elem_id=f"create_{o.name}") if o.choices else
                                     gr.Textbox(value=o.default, label=o.label, info=o.help, visible=False,
                                                elem_id=f"create_{o.name}"))
                            for k in KINDS.values() for o in k.options}
            start_from = gr.Dropdown(["", *ctx.embedding_names()], value="", allow_custom_value=True,
                                     label="Or start from a trained embedding (optional)",
                                     info="A standard embedding from the library: its vectors, not the init text's, "
                                          "e.g. to refine it as per-layer or per-timestep",
                                     elem_id="create_from")
            overwrite = gr.Checkbox(False, label="Overwrite an existing embedding with this name",
                                    elem_id="create_overwrite")
            btn = gr.Button("Create embedding", variant="primary", elem_id="create_btn")
        with gr.Column(scale=2):
            plan = gr.Markdown("Type a name: it is the word you will put in prompts.", elem_id="create_plan")
            result = gr.Markdown(elem_id="create_result")
            created = gr.Textbox(visible=False, elem_id="create_created")

    inputs = [model, name, init_text, vectors, mode]

    def plan_fn(m: str, n: str, t: str, v: float, md: str, start: str | None = "") -> str:
        return describe_plan(ctx, m, n, t, v, md, start or "")

    # One listener for all inputs: with one per input, a slow early answer could land last and
    # show a plan for text that was already changed.
    gr.on([c.change for c in (*inputs, start_from)], plan_fn, [*inputs, start_from], plan, api_name="create_plan",
          show_progress="hidden", trigger_mode="always_last")

    @user_errors("Create")
    def create_fn(m: str, n: str, t: str, v: float, md: str, f: str, ow: bool, k: str, *rest: str
                  ) -> tuple[str, str, str]:
        *opts, start = rest  # the start embedding comes last, so older API calls keep their positions
        msg, created_name = create(ctx, m, n, t, v, md, f, ow, k, dict(zip(kind_options, opts, strict=True)),
                                   start or "")
        return msg, created_name, describe_plan(ctx, m, n, t, v, md, start or "")

    def kind_fn(k: str) -> list:
        own = {o.name for o in get_kind(k).options}
        return [gr.update(visible=name in own) for name in kind_options]

    kind.change(kind_fn, kind, list(kind_options.values()), show_progress="hidden")
    btn.click(create_fn, [*inputs, fmt, overwrite, kind, *kind_options.values(), start_from], [result, created, plan],
              api_name="create_embedding", concurrency_id="model", concurrency_limit=1)
    return CreateTab(model=model, start_from=start_from, result=result, created=created)


def refresh_start_choices(ctx: AppContext, current: str | None) -> gr.Dropdown:
    return gr.Dropdown(choices=["", *ctx.embedding_names()], value=current or "")
