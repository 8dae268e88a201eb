"""Per-layer conditioning in a stock diffusers UNet: layer groups and the attention processors that route.

The UNet gets ONE context tensor holding every group's encoding side by side along the sequence,
[batch, groups × 77, width], and each cross-attention module gets a `RoutedProcessor` that cuts
its own group's 77 positions out before the usual attention runs (the module's previous
processor, kept and called, so SDPA, LoRA or IP-Adapter processors keep working). Nothing of the
UNet is copied or patched, and a pipeline passes the long context through as `prompt_embeds`
without knowing. The processors hold no per-call state, so gradient checkpointing (which runs
attention again during backward) sees the same routing.

A context of any other length passes through untouched: a prompt whose every group encodes the
same (no per-layer embedding in it) is sent as a plain 77-token context and reaches every layer
as usual. The one ambiguity: a caller's own context of exactly groups × 77 tokens (a long-prompt
tool) would be cut up too, so the processors are installed only while per-layer conditioning is in use.

Layers are found from the UNet's own modules (`Attention.is_cross_attention`), so SD 1.x, SD 2.x
and SDXL all work. Groupings (`GROUPINGS`):
- `layer`: every cross-attention module is its own group (SD 1.x/2.x: 16, SDXL: 70);
- `block`: one group per transformer block (`...attentions.N`; SD 1.x/2.x: 16, SDXL: 11);
- `stage`: down / mid / up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

CHUNK = 77  # tokens per encoding: one CLIP chunk (the prompt encoder never makes longer ones)

GROUPINGS: dict[str, str] = {
    "block": "one set per transformer block (SD 1.x/2.x: 16, SDXL: 11)",
    "layer": "one set per cross-attention layer (SD 1.x/2.x: 16, SDXL: 70)",
    "stage": "one set each for the down, mid and up stages (3)",
}
DEFAULT_GROUPING = "block"


class LayoutError(ValueError):
    """A grouping that does not exist, or an embedding made for another UNet's layers."""


@dataclass(frozen=True)
class LayerLayout:
    """The cross-attention layers of one UNet, in module order, and how they are grouped."""

    grouping: str
    layers: tuple[str, ...]  # module paths in call order, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    groups: tuple[str, ...]  # group names, in order of their first layer
    group_of: tuple[int, ...]  # for each layer, the index of its group

    @property
    def size(self) -> int:
        return len(self.groups)

    def layers_in(self, group: int) -> list[str]:
        return [name for name, g in zip(self.layers, self.group_of, strict=True) if g == group]


_STAGE_ORDER = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}


def cross_attention_layers(unet) -> list[str]:
    """The module paths of every cross-attention module of `unet`, in the order a forward pass
    calls them: down, mid, up. (diffusers registers `mid_block` after `up_blocks`, so module
    order alone would put the coarsest layer last.)"""
    from diffusers.models.attention_processor import Attention

    names = [name for name, module in unet.named_modules()
             if isinstance(module, Attention) and module.is_cross_attention]
    return sorted(names, key=lambda n: _STAGE_ORDER.get(n.split(".")[0], len(_STAGE_ORDER)))  # stable


def _group_name(layer: str, grouping: str) -> str:
    if grouping == "layer":
        return layer
    if grouping == "block":
        return layer.split(".transformer_blocks.")[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(layer.split(".")[0], layer.split(".")[0])


def layer_layout(unet, grouping: str = DEFAULT_GROUPING) -> LayerLayout:
    """The layout of `unet`'s cross-attention layers under `grouping` (a key of GROUPINGS)."""
    if grouping not in GROUPINGS:
        raise LayoutError(f"unknown layer grouping {grouping!r}: use one of {', '.join(GROUPINGS)}")
    layers = cross_attention_layers(unet)
    if not layers:
        raise LayoutError("this UNet has no cross-attention layers; per-layer conditioning needs them")
    groups: list[str] = []
    group_of: list[int] = []
    for layer in layers:
        name = _group_name(layer, grouping)
        if name not in groups:
            groups.append(name)
        group_of.append(groups.index(name))
    return LayerLayout(grouping, tuple(layers), tuple(groups), tuple(group_of))


class RoutedProcessor:
    """Wraps a cross-attention module's processor: cuts group `slot` out of a routed context."""

    def __init__(self, inner: Any, slot: int, slots: int):
        self.inner = inner
        self.slot = slot
        self.slots = slots

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if encoder_hidden_states is not None and self.slots > 1 and encoder_hidden_states.shape[1] == self.slots * CHUNK:
            encoder_hidden_states = encoder_hidden_states[:, self.slot * CHUNK:(self.slot + 1) * CHUNK]
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


class Routing:
    """Routed processors installed on a UNet; `remove()` puts the previous processors back."""

    def __init__(self, unet, layout: LayerLayout):
        self.layout = layout
        self._saved: list[tuple[Any, Any]] = []
        modules = dict(unet.named_modules())
        for layer, group in zip(layout.layers, layout.group_of, strict=True):
            module = modules.get(layer)
            if module is None:
                self.remove()
                raise LayoutError(f"the UNet has no cross-attention layer {layer}")
            current = module.processor
            inner = current.inner if isinstance(current, RoutedProcessor) else current  # re-route, never nest
            self._saved.append((module, current))
            module.set_processor(RoutedProcessor(inner, group, layout.size))

    def remove(self) -> None:
        for module, processor in reversed(self._saved):
            module.set_processor(processor)
        self._saved.clear()


def install_routing(unet, layout: LayerLayout | None) -> Routing | None:
    """Route `layout`'s groups on `unet` until `.remove()`; None (nothing to do) for no layout."""
    return Routing(unet, layout) if layout is not None and layout.size > 1 else None


@contextlib.contextmanager
def routed(unet, layout: LayerLayout | None) -> Iterator[None]:
    """`install_routing` for the length of a `with` block (generation)."""
    routing = install_routing(unet, layout)
    try:
        yield
    finally:
        if routing is not None:
            routing.remove()
