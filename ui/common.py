"""What every tab shares: turning failures into short messages in the page, small formatters.

Every button that can fail is wrapped in `user_errors`: the person sees one line saying what went
wrong and what to do; the server log gets the traceback. A stack trace in the page helps nobody.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import gradio as gr

log = logging.getLogger("ui")

F = TypeVar("F", bound=Callable[..., Any])

# Exceptions whose message is written for users (they name the file and the reason).
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def _user_error_types() -> tuple[type[BaseException], ...]:
    types = list(_USER_ERRORS)
    try:
        from models.base import ModelError

        types.append(ModelError)
    except ImportError:
        pass
    for mod, name in (("training.schedule", "ScheduleError"), ("training.config", "ConfigError")):
        try:
            types.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


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
            except _user_error_types() as e:
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
