"""What every tab shares: turning failures into short messages in the page, small formatters.

Every button that can fail is wrapped in `user_errors`: the person sees one line saying what went
wrong and what to do; the server log gets the traceback. A stack trace in the page helps nobody.
"""

from __future__ import annotations

import functools
import logging
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr

from models.base import ModelError

log = logging.getLogger("ui")

F = TypeVar("F", bound=Callable[..., Any])

# Exceptions whose message is written for users (they name the file and the reason). The
# project's input errors (embeddings, config, schedule, dataset ...) are ValueErrors.
USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError, FileNotFoundError, FileExistsError, PermissionError, ModelError,
)


def short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user_errors(action: str) -> Callable[[F], F]:
    """Decorator: known errors become `gr.Error(<short message>)`; others are logged in full."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except USER_ERRORS as e:
                log.info("%s failed: %s", action, e, exc_info=log.isEnabledFor(logging.DEBUG))
                raise gr.Error(short(f"{action}: {e}"), print_exception=False) from e
            except Exception as e:
                log.exception("%s failed", action)
                raise gr.Error(
                    short(f"{action} failed ({e.__class__.__name__}: {e}). The server log has the details."),
                    print_exception=False,
                ) from e

        return inner  # type: ignore[return-value]

    return wrap


def fail(message: str) -> gr.Error:
    """A user-facing error to `raise` from a handler."""
    return gr.Error(short(message), print_exception=False)


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds < 0:
        return "–"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Refresh:
    """How a tab re-reads the data folder when selected (lists go stale when others change it)."""

    fn: Callable[..., Any]
    inputs: list[Any] = field(default_factory=list)
    outputs: list[Any] = field(default_factory=list)

    @property
    def refresh_fn(self) -> Callable[..., Any]:
        return self.fn

    @property
    def refresh_inputs(self) -> list[Any]:
        return self.inputs

    @property
    def refresh_outputs(self) -> list[Any]:
        return self.outputs


# --- dataclass fields -> widgets --------------------------------------------------------------------------
# The Preprocess and Train forms are generated from their options dataclasses, so a new option shows
# up in the page the day it is added to the dataclass. This is the one place that decides which widget
# a field gets; the tabs only supply labels, help text and choices.

@dataclass(frozen=True)
class FieldText:
    """What a person reads for one option: a plain-words label and, where the name alone is
    unclear, a one-line `info` shown under it."""

    label: str
    info: str | None = None


def field_text(name: str, texts: dict[str, FieldText]) -> FieldText:
    """The tab's wording for a field, or its name made readable (a new option still gets a label)."""
    return texts.get(name) or FieldText(name.replace("_", " ").capitalize())


def widget_for_field(name: str, hint: Any, default: Any, *, label: str | None = None, info: str | None = None,
                     choices: Sequence[str] | None = None, elem_id: str | None = None,
                     **kwargs: Any) -> gr.components.Component:
    """The widget for one dataclass field, chosen by its type hint.

    bool -> Checkbox; int -> Number(precision=0); float -> Number; a str with `choices` -> Dropdown;
    a list with `choices` -> CheckboxGroup; list[int] -> comma-separated Textbox; list[str] -> one
    item per line; anything else (str, str | None) -> Textbox. Extra `kwargs` go to the widget
    (min_width, scale, lines...), so tabs keep their special cases as small overrides.
    """
    label = label or name.replace("_", " ").capitalize()
    common: dict[str, Any] = {"label": label, "elem_id": elem_id, **kwargs}
    if info:
        common["info"] = info
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (str,)
        values = list(default or [])
        if choices is not None:
            return gr.CheckboxGroup(list(choices), value=values, **common)
        if item is int:
            return gr.Textbox(", ".join(str(v) for v in values), **common)
        return gr.Textbox("\n".join(str(v) for v in values), **{"lines": 2, **common})
    if hint is bool:
        return gr.Checkbox(bool(default), **common)
    if hint is int:
        return gr.Number(default, precision=0, **common)
    if hint is float:
        return gr.Number(default, **common)
    if choices is not None:
        return gr.Dropdown(list(choices), value=default, **common)
    return gr.Textbox("" if default is None else str(default), **common)


def is_checkbox(hint: Any) -> bool:
    return hint is bool


def grouped_fields(groups: Sequence[tuple[str, Sequence[str]]], hints: dict[str, Any],
                   make: Callable[..., gr.components.Component], *, per_row: int = 2,
                   min_width: int = 160, checkboxes_first: bool = True) -> dict[str, gr.components.Component]:
    """Lay fields out by topic: a small heading per group (none for an empty title), its
    checkboxes in rows of their own (a checkbox squeezed into a row of text fields loses its
    label), then the other fields, `per_row` to a row (2 fit the Train tab's left column at
    1400 px with every label in full); `checkboxes_first=False` puts the checkboxes after them.
    `make(name, min_width=...)` builds one widget.
    Returns the widgets by field name; call inside the container (accordion, column) to fill."""
    out: dict[str, gr.components.Component] = {}
    for title, names in groups:
        names = [n for n in names if n in hints]
        if not names:
            continue
        if title:
            gr.Markdown(f"**{title}**", elem_classes=["ti-field-group"])
        boxes = [n for n in names if is_checkbox(hints[n])]
        others = [n for n in names if not is_checkbox(hints[n])]
        for chunk in ((boxes, others) if checkboxes_first else (others, boxes)):
            for i in range(0, len(chunk), per_row):
                row = chunk[i:i + per_row]
                with gr.Row(equal_height=False):
                    for n in row:
                        out[n] = make(n, min_width=min_width)
                    for _ in range(per_row - len(row)):  # keep the columns aligned in a short row
                        gr.HTML(min_width=min_width, js_on_load=None)
    return out
