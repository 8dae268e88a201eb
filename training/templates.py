"""Prompt templates: one prompt per line with ``[name]`` and ``[filewords]`` placeholders.

Files are read as UTF-8 (A1111 used the platform default, which breaks non-ASCII lines on
Windows). Blank lines and lines starting with ``#`` are skipped. A template used for embedding
training must put ``[name]`` in at least one line: without it the embedding never appears in a
prompt, gets no gradient, and A1111 crashed with "No inf checks were recorded".
"""

from __future__ import annotations

from pathlib import Path

TEMPLATES_DIR: Path = Path(__file__).resolve().parents[1] / "textual_inversion_templates"
NAME = "[name]"
FILEWORDS = "[filewords]"


class TemplateError(ValueError):
    """A template that cannot be used. The message names the file and the reason."""


def list_templates(extra_dir: Path | None = None) -> dict[str, Path]:
    """Template name (file stem) -> path; the user's ``extra_dir`` (searched recursively) wins."""
    found: dict[str, Path] = {}
    for folder in (TEMPLATES_DIR, Path(extra_dir) if extra_dir else None):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*.txt")):
            if path.is_file() and not path.name.startswith("."):
                found[path.stem] = path
    return dict(sorted(found.items()))


def _resolve(name_or_path: str | Path, extra_dir: Path | None) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    stem = path.name[:-4] if path.name.endswith(".txt") else path.name
    templates = list_templates(extra_dir)
    if str(name_or_path) in (stem, f"{stem}.txt") and stem in templates:
        return templates[stem]
    known = ", ".join(templates) or "none"
    raise TemplateError(f"template {str(name_or_path)!r} not found (not a file; known templates: {known})")


def read_lines(path: Path) -> list[str]:
    """Non-empty, stripped, non-comment lines of a template file."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TemplateError(f"{Path(path).name}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise TemplateError(f"{Path(path).name}: cannot read ({e.strerror or e})") from None
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def load_template(name_or_path: str | Path, extra_dir: Path | None = None) -> list[str]:
    """The template's lines; refuses a template with no line containing ``[name]``."""
    path = _resolve(name_or_path, extra_dir)
    lines = read_lines(path)
    if not lines:
        raise TemplateError(f"{path.name}: the template has no lines")
    if not any(NAME in line for line in lines):
        raise TemplateError(
            f"{path.name}: no line contains {NAME}, so the embedding would never be in a prompt "
            f"and could not learn; add {NAME} to the lines or pick another template"
        )
    return lines


def lines_without_name(lines: list[str]) -> list[str]:
    """Lines that would train nothing (no ``[name]``); worth a warning, not a refusal."""
    return [line for line in lines if NAME not in line]


def render(line: str, name: str, filewords: str) -> str:
    """Fill one template line: ``[filewords]`` first, then ``[name]`` (A1111's order).

    The order matters when a caption itself contains the text "[name]": A1111 then puts the
    embedding there too, and so do we, so prompts match between the two tools.
    """
    return line.replace(FILEWORDS, filewords).replace(NAME, name)
