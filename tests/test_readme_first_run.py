"""The README's first-run commands, as written there, work: read from README.md and run in a fresh
folder (so `./data` is new), each a real subprocess. A renamed flag or template breaks this test
rather than a newcomer's first minutes."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["toy_fixtures"]

ROOT = Path(__file__).resolve().parents[1]


def first_run_commands() -> list[list[str]]:
    """The shell commands of the README's first-run section's last ```bash block, continuation
    lines joined, with `python` made this interpreter and `app.py` this tree's."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## First run", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```bash\n(.*?)```", section, flags=re.S)[-1]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        assert argv[0] == "python", f"not a python command: {line}"
        argv[0] = sys.executable
        if argv[1] == "app.py":
            argv[1] = str(ROOT / "app.py")
        commands.append(argv)
    return commands


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_first_run_commands_work(tmp_path, toy_reader):
    from PIL import Image

    commands = first_run_commands()
    assert [c[2] for c in commands] == [
        "models.toy.planted", "create", "train", "generate"], commands
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for argv in commands:
        if argv[2] == "train":
            argv.append("--no-bar")
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{shlex.join(argv[1:])}:\n{proc.stdout}\n{proc.stderr}"
    data = tmp_path / "data"
    previews = sorted(p.name for p in data.glob("runs/bluecircle-*/previews/*.png"))
    assert previews[0] == "bluecircle-000000-0.png" and previews[-1] == "bluecircle-000300-0.png", previews
    out = tmp_path / "circle.png"
    with Image.open(out) as img:
        reading = toy_reader.read(img)
    assert reading.colour == "blue" and reading.background == "red", reading  # the trained concept's colour
