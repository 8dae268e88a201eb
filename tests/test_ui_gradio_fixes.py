"""The patched Gradio asset: the launched app serves the status tracker whose frame loop stops
once the tracker leaves the page (an idle page otherwise runs 60 frames a second forever), and an
asset this fix does not know is left alone."""

from __future__ import annotations

import urllib.request

from tests.ui_fixtures import running_app
from ui.gradio_fixes import FIXED, LOOP, assets_dir, status_tracker_fix


def test_the_app_serves_the_status_tracker_with_its_frame_loop_bounded(data):
    fix = status_tracker_fix()
    assert fix is not None, "the pinned Gradio's status tracker changed: re-check ui/gradio_fixes.py"
    original = (assets_dir() / fix.name).read_text(encoding="utf-8")
    assert original.count(LOOP) == 1 and FIXED not in original
    with running_app(data) as app:
        served = urllib.request.urlopen(f"{app.url}/assets/{fix.name}", timeout=30).read().decode()
        other = urllib.request.urlopen(f"{app.url}/favicon.ico", timeout=30).status
    assert served == fix.text and served.count(FIXED) == 1 and LOOP not in served
    assert other == 200  # Gradio's own routes still answer


def test_an_unknown_asset_is_served_as_it_is(tmp_path):
    assert status_tracker_fix(tmp_path) is None  # no tracker at all
    (tmp_path / "statustracker-abc.js").write_text("function ze(){me(()=>{W&&tick()})}")
    assert status_tracker_fix(tmp_path) is None
