"""Every training option has plain-words wording, shared by the web form and `train --help`."""

import dataclasses

from cli import build_parser
from training.config import TrainConfig
from training.config_text import FIELD_TEXT


def test_every_field_has_a_label_and_no_stale_entries():
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - FIELD_TEXT.keys() == set()
    assert FIELD_TEXT.keys() - fields == set()
    for key, (label, info) in FIELD_TEXT.items():
        assert label.strip() and label != key, key
        assert info is None or info.strip(), key


def test_train_help_uses_the_shared_wording():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in sub.choices["train"]._actions}
    label, info = FIELD_TEXT["lr"]
    assert helps["lr"] == f"{label} ({info})"
    assert helps["max_steps"] == FIELD_TEXT["max_steps"][0]
