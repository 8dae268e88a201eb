"""Per-layer (P+ / XTI) embeddings: layouts, routing, equivalence, gradients, training, resume,
files, the stock-pipeline function and style mixing, on the tiny models (plumbing)."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from embeddings.embedding import EmbeddingError
from embeddings.formats import load_embedding, save_embedding
from embeddings.kinds import KINDS, PER_LAYER, coarse_mask, install_routing, layer_layout, routed, style_mix
from embeddings.prompt import PromptEncoder, generate
from jobs.registry import Job
from models.load import load_base_model
from tests.kinds_fixtures import check_non_finite_steps_stop, check_resume_is_bit_exact, moved, std_embedding
from training.loss import denoise_loss
from training.trainer import train

pytest_plugins = ["train_fixtures"]


def _unet_out(model, cond, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=gen)
    with torch.no_grad():
        return model.unet(sample, torch.tensor([500]), cond.hidden, return_dict=False)[0]


def test_layouts_from_the_unets_own_modules(tiny_model):
    layer = layer_layout(tiny_model.unet, "layer")
    block = layer_layout(tiny_model.unet, "block")
    stage = layer_layout(tiny_model.unet, "stage")
    assert len(layer.layers) == 16 and layer.size == 16 and block.size == 16  # SD 1.x: one layer per block
    assert stage.groups == ("down", "mid", "up") and stage.size == 3
    assert all(name.endswith("attn2") for name in layer.layers)
    with pytest.raises(Exception, match="unknown layer grouping"):
        layer_layout(tiny_model.unet, "nope")


def test_registry_lists_kinds_with_a_line_each():
    assert list(KINDS)[:2] == ["standard", "per-layer"]  # later kinds follow
    assert all(k.summary and k.label for k in KINDS.values())


def test_all_groups_equal_gives_exactly_the_standard_unet_output(tiny_model):
    std = std_embedding(tiny_model)
    pl = PER_LAYER.make(std, tiny_model.unet)
    layout = PER_LAYER.layout(pl, tiny_model.unet)
    prompts = ["a photo of zork"]
    plain = PromptEncoder(tiny_model, {"zork": 2}).encode(prompts, {"zork": std.vectors})
    enc = PromptEncoder(tiny_model, {"zork": 2}, layout=layout)
    with routed(tiny_model.unet, layout):
        shared = enc.encode(prompts, {"zork": pl.parts})  # equal groups: one encoding reused
        assert torch.equal(shared.hidden, plain.hidden)
        assert torch.equal(_unet_out(tiny_model, shared), _unet_out(tiny_model, plain))
        # and through the routing proper: every group encoded on its own row, each layer its slice
        live = {k: v.clone().requires_grad_(True) for k, v in pl.parts.items()}
        routed_cond = enc.encode(prompts, {"zork": live})
        assert routed_cond.hidden.shape[1] == 16 * 77
        assert all(torch.equal(routed_cond.hidden[:, g * 77:(g + 1) * 77], plain.hidden) for g in range(16))
        assert torch.equal(_unet_out(tiny_model, routed_cond), _unet_out(tiny_model, plain))


def test_routing_really_routes(tiny_model):
    """Different groups change the output, and changing one group's vectors changes it again."""
    pl = moved(PER_LAYER.make(std_embedding(tiny_model), tiny_model.unet))
    layout = PER_LAYER.layout(pl, tiny_model.unet)
    enc = PromptEncoder(tiny_model, {"zork": 2}, layout=layout)
    with routed(tiny_model.unet, layout):
        cond = enc.encode(["zork"], {"zork": pl.parts})
        assert cond.hidden.shape == (1, 16 * 77, 32)
        base = _unet_out(tiny_model, cond)
        changed = {k: v.clone() for k, v in pl.parts.items()}
        changed["clip_l"][7] += 1.0
        assert not torch.equal(_unet_out(tiny_model, enc.encode(["zork"], {"zork": changed})), base)
    # the processors are gone afterwards
    assert not any(type(p).__name__ == "RoutedProcessor" for p in tiny_model.unet.attn_processors.values())


def test_each_group_gets_its_own_gradient(tiny_model):
    pl = PER_LAYER.make(std_embedding(tiny_model), tiny_model.unet)
    layout = PER_LAYER.layout(pl, tiny_model.unet)
    enc = PromptEncoder(tiny_model, {"zork": 2}, layout=layout)
    live = {k: v.clone().requires_grad_(True) for k, v in pl.parts.items()}
    sched = DDPMScheduler.from_config(tiny_model.scheduler.config)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    routing = install_routing(tiny_model.unet, layout)
    try:
        cond = enc.encode(["a photo of zork", "zork"], {"zork": live})
        denoise_loss(tiny_model, sched, latents, noise, torch.tensor([100, 700]), cond).backward()
    finally:
        routing.remove()
    g = live["clip_l"].grad
    per_group = g.flatten(1).norm(dim=1)
    assert (per_group > 0).all()  # every group has a gradient although all start equal ...
    assert len({round(float(x), 12) for x in per_group}) > 8  # ... and they are not one gradient copied


def test_trains_groups_apart_and_writes_per_layer_files(tiny_model, data, solid_dataset):
    from train_fixtures import tiny_config

    std = std_embedding(tiny_model, "flatcol")
    save_embedding(PER_LAYER.make(std, tiny_model.unet), data.embeddings / "flatcol.safetensors")
    job = Job(id="pl", kind="train", title="pl")
    out = train(tiny_config(data, solid_dataset, max_steps=3, eval_every=3, snapshot_formats=["safetensors", "pt"],
                            preview_every=3, preview_steps=2, save_png_embeddings=True),
                tiny_model, data, job)
    assert len(job.events("preview")) == 1  # previews render from the live per-layer vectors
    final = load_embedding(out["files"]["safetensors"])
    assert final.kind == "per-layer" and final.step == 3
    parts = final.parts["clip_l"]
    assert parts.shape == (16, 2, 32)
    spread = (parts - parts.mean(0)).flatten(1).norm(dim=1)
    assert (spread > 0).all()  # the groups moved apart
    assert torch.equal(final.vectors["clip_l"], parts.mean(0))  # the standard part: the mean
    assert not torch.equal(parts[0], std.vectors["clip_l"])
    pt = load_embedding(out["files"]["pt"])  # .pt holds the standard part
    assert pt.kind == "standard" and torch.equal(pt.vectors["clip_l"], final.vectors["clip_l"])
    norms = job.events("norms")
    assert norms and len(norms[-1].data["layers"]["clip_l"]) == 16
    assert len(norms[-1].data["layers"]["clip_l"][0]) == 2
    assert not any(type(p).__name__ == "RoutedProcessor" for p in tiny_model.unet.attn_processors.values())


def test_per_layer_resume_is_bit_exact(tiny_model, data, solid_dataset):
    state = check_resume_is_bit_exact(tiny_model, data, solid_dataset, lambda e: PER_LAYER.make(e, tiny_model.unet),
                                      density_weight=0.01)
    assert state.vectors["clip_l"].shape == (16, 2, 32)


def test_per_layer_non_finite_steps_are_skipped_then_stop(tiny_model, data, solid_dataset):
    check_non_finite_steps_stop(tiny_model, data, solid_dataset, lambda e: PER_LAYER.make(e, tiny_model.unet))


@pytest.mark.parametrize("grouping", ["block", "stage"])
def test_files_round_trip_bit_exact(tiny_model, tmp_path, grouping):
    pl = moved(PER_LAYER.make(std_embedding(tiny_model), tiny_model.unet, grouping=grouping))
    pl.metadata["init_text"] = "cat"
    for fmt in ("safetensors", "png"):
        back = load_embedding(save_embedding(pl, tmp_path / f"zork.{fmt}"))
        assert back.kind == "per-layer" and back.equal(pl) and back.kind_info == pl.kind_info
        assert "kind_parts" not in back.metadata and back.metadata["init_text"] == "cat"
    for fmt in ("pt", "diffusers"):
        back = load_embedding(save_embedding(pl, tmp_path / f"zork-{fmt}", fmt=fmt))
        assert back.kind == "standard" and torch.equal(back.vectors["clip_l"], pl.vectors["clip_l"])
    assert "standard part" in PER_LAYER.export_note(pl, "pt")


def test_chosen_group_as_standard_part(tiny_model, tmp_path):
    std = std_embedding(tiny_model)
    group = layer_layout(tiny_model.unet, "block").groups[6]
    pl = moved(PER_LAYER.make(std, tiny_model.unet, standard_part=group))
    assert torch.equal(pl.vectors["clip_l"], pl.parts["clip_l"][6])
    assert load_embedding(save_embedding(pl, tmp_path / "z.safetensors")).equal(pl)


def test_standard_part_loads_in_diffusers(data, tmp_path):
    # a model of its own: diffusers resizes the text encoder (and its config) when it adds tokens,
    # which must not leak into the session's shared tiny model
    model = load_base_model("tiny", data)
    pl = moved(PER_LAYER.make(std_embedding(model), model.unet))
    path = save_embedding(pl, tmp_path / "zork.safetensors")
    pipe = model.pipeline()
    tokenizer, te = pipe.tokenizer, pipe.text_encoder
    n_tokens = len(tokenizer)
    try:
        pipe.load_textual_inversion(str(path), token="zork")
        ids = tokenizer.convert_tokens_to_ids(["zork", "zork_1"])
        rows = te.get_input_embeddings().weight[ids].detach()
        assert torch.equal(rows, pl.vectors["clip_l"])
    finally:
        pipe.unload_textual_inversion()
    assert len(tokenizer) == n_tokens


def test_stock_pipeline_function_matches_generate(tiny_model):
    from embeddings.pipeline import install_embeddings

    pl = moved(PER_LAYER.make(std_embedding(tiny_model), tiny_model.unet))
    ours = generate(tiny_model, "a photo of zork", [pl], seed=3, steps=2, cfg=5.0)
    pipe = tiny_model.pipeline()
    pipe.set_progress_bar_config(disable=True)
    with install_embeddings(pipe, [pl]) as installed:
        kwargs = installed.encode("a photo of zork")
        assert kwargs["prompt_embeds"].shape[1] == 16 * 77 == kwargs["negative_prompt_embeds"].shape[1]
        image = pipe(**kwargs, num_inference_steps=2, guidance_scale=5.0, width=64, height=64,
                     generator=torch.Generator().manual_seed(3)).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(ours))
    assert not any(type(p).__name__ == "RoutedProcessor" for p in pipe.unet.attn_processors.values())


def test_sdxl_per_block_routing_and_training_step(data, tmp_path):

    xl = load_base_model("tiny-sdxl", data)
    pl = moved(PER_LAYER.make(std_embedding(xl), xl.unet))
    layout = PER_LAYER.layout(pl, xl.unet)
    assert layout.size == len(set(layout.groups)) < len(layout.layers)  # blocks group several layers
    assert set(pl.parts) == {"clip_l", "clip_g"}
    from embeddings.pipeline import install_embeddings

    pipe = xl.pipeline()
    pipe.set_progress_bar_config(disable=True)
    with install_embeddings(pipe, [pl]) as installed:
        kwargs = installed.encode("zork")
        assert kwargs["prompt_embeds"].shape[1] == layout.size * 77
        pipe(**kwargs, num_inference_steps=1, width=64, height=64, output_type="latent")
    back = load_embedding(save_embedding(pl, tmp_path / "xl.safetensors"))
    assert back.equal(pl)


def test_style_mix_takes_each_layer_from_one_embedding(tiny_model):
    a = moved(PER_LAYER.make(std_embedding(tiny_model, "obj"), tiny_model.unet), seed=1)
    b = std_embedding(tiny_model, "sty")  # a standard embedding mixes too
    mask = coarse_mask(16, 4)
    assert mask == [False] * 4 + [True] * 8 + [False] * 4
    mixed = style_mix(a, b, tiny_model.unet, mask)
    assert mixed.name == "obj" and mixed.kind_info["grouping"] == "layer"
    for i, inner in enumerate(mask):
        want = a.parts["clip_l"][i] if inner else b.vectors["clip_l"]
        assert torch.equal(mixed.parts["clip_l"][i], want)
    all_a = style_mix(a, b, tiny_model.unet, coarse_mask(16, 0))
    assert torch.equal(all_a.parts["clip_l"], a.parts["clip_l"])
    with pytest.raises(EmbeddingError, match="must match"):
        style_mix(a, std_embedding(tiny_model, "three", 3), tiny_model.unet, mask)


def test_embedding_made_for_another_unet_is_refused(tiny_model, data):

    xl = load_base_model("tiny-sdxl", data)
    pl = PER_LAYER.make(std_embedding(xl), xl.unet)
    other = pl.copy(kind_info={**pl.kind_info, "groups": ["a", "b"]})
    with pytest.raises(EmbeddingError, match="made for a UNet"):
        PER_LAYER.layout(other, xl.unet)


def test_sdxl_per_layer_trains(data, solid_dataset):
    from train_fixtures import tiny_config


    xl = load_base_model("tiny-sdxl", data)
    save_embedding(PER_LAYER.make(std_embedding(xl, "flatcol"), xl.unet), data.embeddings / "flatcol.safetensors")
    out = train(tiny_config(data, solid_dataset, model="tiny-sdxl", max_steps=2), xl, data,
                Job(id="x", kind="train", title="x"))
    final = load_embedding(out["files"]["safetensors"])
    assert final.kind == "per-layer" and set(final.parts) == {"clip_l", "clip_g"}
    for key, parts in final.parts.items():
        assert (parts - parts.mean(0)).flatten(1).norm(dim=1).gt(0).all(), key


def test_mixed_groupings_in_one_prompt(tiny_model):
    """A block-grouped and a stage-grouped embedding together: routed per layer, each layer gets its
    own group's vectors from each embedding."""
    from embeddings.kinds import conditioning_layout
    from embeddings.prompt import prepare_conditioning

    a = moved(PER_LAYER.make(std_embedding(tiny_model, "aaa"), tiny_model.unet, grouping="block"), seed=1)
    b = moved(PER_LAYER.make(std_embedding(tiny_model, "bbb"), tiny_model.unet, grouping="stage"), seed=2)
    layout = conditioning_layout(tiny_model.unet, [a, b])
    assert layout.grouping == "layer" and layout.size == 16
    on_layers = PER_LAYER.condition(b, layout)["clip_l"]
    stage = layer_layout(tiny_model.unet, "stage")
    for i, g in enumerate(stage.group_of):
        assert torch.equal(on_layers[i], b.parts["clip_l"][g])
    (cond, uncond), used_layout = prepare_conditioning(tiny_model, ["aaa and bbb", ""], [a, b])
    assert used_layout == layout and cond.hidden.shape == uncond.hidden.shape == (1, 16 * 77, 32)
    assert torch.equal(uncond.hidden[:, :77], uncond.hidden[:, 77:154])  # a plain prompt, widened


def test_job_view_keeps_the_latest_layer_grid():
    from jobs import events
    from jobs.view import view_of

    grid = {"clip_l": [[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]}
    evs = [events.Norms(1, {"clip_l": [0.3, 0.4]}, layers=grid),
           events.Norms(2, {"clip_l": [0.31, 0.41]}, layers={"clip_l": [[1.0, 2.0]] * 3})]
    view = view_of(evs)
    assert view.layer_grid() == (2, {"clip_l": [[1.0, 2.0]] * 3})
    back = events.from_data("norms", events.to_data(evs[0]))
    assert back == evs[0]  # the grid survives the event log's JSON
    assert view_of([events.Norms(1, {"clip_l": [0.3]})]).layer_grid() is None
