"""Fixes for Gradio's own page, served by our app, so an idle page costs (almost) no CPU.

Gradio 6.31's status tracker (the "Loading..." overlay and the one behind each component) counts
elapsed time with a `requestAnimationFrame` loop that runs while its status is "pending" and stops
when the status changes. The page-level tracker shown while the app loads is removed from the page
while still pending, so nothing ever stops its loop: every open page then runs a 60-frames-a-second
loop forever, about 5% of a CPU core in Chromium, which a training run on a small machine feels.

The fix is one condition in that loop: go on only while the tracker is still in the page (its
element is bound, or not yet bound). The asset is served patched through a route placed before
Gradio's own `/assets/` route; when the installed Gradio's asset no longer holds the loop as
written here (another version), nothing is patched and the original is served.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The loop as Gradio 6.31 minifies it: `ze` requests the next frame while `W` (running) is true;
# `U` is the tracker's element (undefined before mount, null once removed).
LOOP = "W&&ze()})}"
FIXED = "W&&(U===void 0||U?.isConnected)&&ze()})}"


@dataclass(frozen=True)
class PatchedAsset:
    name: str  # the file name under Gradio's frontend assets, e.g. statustracker-DQF-KcRT.js
    text: str


def assets_dir() -> Path:
    import gradio

    return Path(gradio.__file__).resolve().parent / "templates" / "frontend" / "assets"


def status_tracker_fix(folder: Path | None = None) -> PatchedAsset | None:
    """The status tracker asset with its frame loop stopped once the tracker leaves the page, or
    None when the installed Gradio's asset is not the one this fix knows (then nothing changes)."""
    folder = folder or assets_dir()
    candidates = sorted(folder.glob("statustracker-*.js"))
    if len(candidates) != 1:
        log.info("no single statustracker asset in %s: served unpatched", folder)
        return None
    text = candidates[0].read_text(encoding="utf-8")
    if text.count(LOOP) != 1:
        log.info("%s: the status tracker's frame loop is not as expected: served unpatched", candidates[0].name)
        return None
    return PatchedAsset(candidates[0].name, text.replace(LOOP, FIXED))


def routes() -> list:
    """Starlette routes to hand to Gradio's app before its own (launch's app_kwargs["routes"])."""
    from starlette.responses import Response
    from starlette.routing import Route

    fix = status_tracker_fix()
    if fix is None:
        return []

    async def serve(request):  # noqa: ARG001 - Starlette passes the request
        return Response(fix.text, media_type="text/javascript")

    return [Route(f"/assets/{fix.name}", serve, methods=["GET"])]
