"""workspace.atomic.build_folder_once: the one rule for folders a program builds (built-in models,
benchmark weights): built once per stamp, never left half-built."""

import json

import pytest

from workspace.atomic import build_folder_once


def test_built_once_per_stamp_and_rebuilt_when_it_changes(tmp_path):
    calls = []

    def build(staging):
        calls.append(staging)
        (staging / "weights.bin").write_bytes(b"w" * len(calls))

    folder = tmp_path / "models" / "m"
    assert build_folder_once(folder, "marker.json", {"version": 1}, build) == folder
    assert build_folder_once(folder, "marker.json", {"version": 1}, build) == folder
    assert len(calls) == 1 and json.loads((folder / "marker.json").read_text()) == {"version": 1}
    build_folder_once(folder, "marker.json", {"version": 2}, build)
    assert len(calls) == 2 and (folder / "weights.bin").read_bytes() == b"ww"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["m"]  # no staging folder left


def test_a_failed_build_leaves_the_old_folder_and_no_staging(tmp_path):
    folder = tmp_path / "m"
    build_folder_once(folder, "marker.json", {"version": 1}, lambda s: (s / "a").write_text("old"))

    def broken(staging):
        (staging / "a").write_text("half")
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        build_folder_once(folder, "marker.json", {"version": 2}, broken)
    assert (folder / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    (folder / "marker.json").write_text("{not json")  # a damaged marker means: build again
    build_folder_once(folder, "marker.json", {"version": 1}, lambda s: (s / "a").write_text("new"))
    assert (folder / "a").read_text() == "new"
