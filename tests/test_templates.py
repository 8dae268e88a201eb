"""Prompt templates: shipped files, loading rules, render order, refusal without [name]."""

import pytest

from training.templates import TEMPLATES_DIR, TemplateError, list_templates, load_template, render


def test_shipped_templates_all_train_the_name():
    names = list_templates()
    for expected in ("subject", "subject_filewords", "style", "style_filewords", "caption_only"):
        assert expected in names
        assert names[expected].parent == TEMPLATES_DIR
    for name, path in names.items():
        lines = load_template(name)
        raw = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
        assert lines == raw, name
        assert all("[name]" in line for line in lines), name
        if name.endswith("filewords") or name == "caption_only":
            assert all("[filewords]" in line for line in lines), name
        else:
            assert not any("[filewords]" in line for line in lines), name
        assert len(set(lines)) == len(lines), f"{name} has duplicate lines"


def test_lines_are_stripped_non_empty_utf8_without_comments(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("\ufeff# a comment\n  un café de [name]  \n\n\t\n[filewords] by [name]\r\n", encoding="utf-8")
    assert load_template(p) == ["un café de [name]", "[filewords] by [name]"]
    assert load_template(str(p)) == ["un café de [name]", "[filewords] by [name]"]


def test_extra_dir_is_listed_recursively_and_wins(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "subject.txt").write_text("my own [name]\n", encoding="utf-8")
    (tmp_path / "extra.txt").write_text("[name] extra\n", encoding="utf-8")
    names = list_templates(tmp_path)
    assert names["subject"] == tmp_path / "sub" / "subject.txt"
    assert "style" in names
    assert load_template("subject", tmp_path) == ["my own [name]"]
    assert load_template("extra.txt", tmp_path) == ["[name] extra"]
    assert load_template("subject") != ["my own [name]"]


def test_template_without_name_is_refused(tmp_path):
    p = tmp_path / "hypernetwork.txt"
    p.write_text("a photo of [filewords]\npicture\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"hypernetwork.txt: no line contains \[name\]"):
        load_template(p)
    (tmp_path / "empty.txt").write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(TemplateError, match="empty.txt: the template has no lines"):
        load_template(tmp_path / "empty.txt")


def test_unknown_and_undecodable_templates(tmp_path):
    with pytest.raises(TemplateError, match="not found.*subject_filewords"):
        load_template("no_such_template")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 [name]".encode("latin-1"))
    with pytest.raises(TemplateError, match="latin1.txt: not UTF-8"):
        load_template(bad)


def test_render_replaces_filewords_first_then_name():
    assert render("a photo of [name], [filewords]", "mycat", "sitting, grass") == "a photo of mycat, sitting, grass"
    # a caption holding the literal "[name]" gets the embedding too (A1111 order)
    assert render("[filewords] by [name]", "zz", "a [name] toy") == "a zz toy by zz"
    assert render("[name] and [name]", "zz", "") == "zz and zz"
