"""Model-family facts have one home (embeddings.families), and packages import only downwards."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cli import main
from embeddings.families import (
    BUILTIN_MODELS,
    CLIP_G,
    CLIP_H,
    CLIP_L,
    FAMILIES,
    family_for_text_encoders,
    family_for_widths,
    fitting_models,
    single_encoder_key,
)
from embeddings.formats import save_embedding
from tests.formats_fixtures import make_embedding

ROOT = Path(__file__).resolve().parents[1]


def test_published_families():
    assert {name: f.widths for name, f in FAMILIES.items()} == {
        "sd1": {CLIP_L: 768}, "sd2": {CLIP_H: 1024}, "sdxl": {CLIP_L: 768, CLIP_G: 1280}}
    assert FAMILIES["sdxl"].pad_tokens == ("<|endoftext|>", "!") and FAMILIES["sd2"].pad_tokens == ("!",)
    assert family_for_widths({CLIP_L: 768, CLIP_G: 1280}) == "sdxl"
    assert family_for_widths({CLIP_G: 1280, CLIP_L: 768}) == "sdxl"  # key order does not matter
    assert family_for_widths({CLIP_L: 32}) is None and family_for_widths({CLIP_L: 1024}) is None


def test_one_tensor_files_and_one_encoder_models_follow_the_same_width_rule():
    assert single_encoder_key(1024) == CLIP_H and single_encoder_key(768) == CLIP_L
    assert single_encoder_key(32) == CLIP_L  # the tiny model's width: a CLIP-L layout
    assert [family_for_text_encoders(w, 1) for w in (768, 1024, 32)] == ["sd1", "sd2", "sd1"]
    assert family_for_text_encoders(32, 2) == "sdxl"
    assert single_encoder_key(48) == CLIP_H and family_for_text_encoders(48, 1) == "sd2"  # tiny-sd2v's width


def test_fitting_models_names_families_and_builtins():
    assert fitting_models({CLIP_L: 768}) == ["sd1"]
    assert fitting_models({CLIP_L: 32}) == ["tiny"]
    assert fitting_models({CLIP_L: 32, CLIP_G: 64}) == ["tiny-sdxl"]
    assert fitting_models({CLIP_L: 500}) == []


@pytest.mark.parametrize("name", sorted(BUILTIN_MODELS))
def test_builtin_widths_are_the_real_models_widths(name, shared_data):
    from models.load import load_base_model

    model = load_base_model(name, shared_data)
    builtin = BUILTIN_MODELS[name]
    assert model.widths == builtin.widths and model.family == builtin.family
    assert model.encoder_keys == FAMILIES[builtin.family].encoder_keys
    assert tuple(t.pad_token for t in model.tokenizers) == FAMILIES[builtin.family].pad_tokens


def test_inspect_says_a_tiny_sdxl_embedding_fits_tiny_sdxl(tmp_path, capsys):
    path = save_embedding(make_embedding("toyxl", {CLIP_L: 32, CLIP_G: 64}, n=2), tmp_path / "toyxl.safetensors")
    assert main(["inspect", str(path)]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines() if ":" in line)
    assert lines["fits"].strip() == "tiny-sdxl"
    assert main(["inspect", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["fits"] == ["tiny-sdxl"]


def test_inspect_of_a_file_that_fits_nothing_lists_every_known_width(tmp_path, capsys):
    path = save_embedding(make_embedding("odd", {CLIP_L: 500}), tmp_path / "odd.pt")
    assert main(["inspect", str(path)]) == 0
    fits = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("fits:"))
    assert "no known model family" in fits
    for expected in ("sd1 768", "sd2 1024", "sdxl 768+1280", "tiny 32", "tiny-sdxl 32+64", "tiny-sd2v 48"):
        assert expected in fits


# ---------------------------------------------------------------------------------------------
# Import layers, read from the source with `ast` so imports inside functions count too.

# Low to high. A package may import its own rank or lower only; `cli` may start the UI (`serve`).
LAYERS = {"workspace": 0, "jobs": 0, "embeddings": 1, "models": 2, "preprocessing": 3, "training": 4, "ui": 5,
          "cli": 6}


def _imports(package: str, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, imported module) for every absolute import in the package's modules."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                found += [(path.relative_to(root).as_posix(), node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append((path.relative_to(root).as_posix(), node.lineno, node.module))
    return found


def test_the_import_reader_sees_imports_inside_functions(tmp_path):
    (tmp_path / "lazy").mkdir()
    (tmp_path / "lazy" / "m.py").write_text("def f():\n    from models.tiny import TINY\n    return TINY\n")
    assert _imports("lazy", tmp_path) == [("lazy/m.py", 2, "models.tiny")]


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_package_imports_a_higher_one(package):
    upward = [f"{f}:{line} imports {mod}" for f, line, mod in _imports(package)
              if mod.split(".")[0] in LAYERS and mod.split(".")[0] != package
              and LAYERS[mod.split(".")[0]] >= LAYERS[package]]
    assert not upward, upward


@pytest.mark.parametrize("package", ["workspace", "jobs", "embeddings", "models", "preprocessing", "training"])
def test_core_never_imports_gradio(package):
    assert not [f"{f}:{line}" for f, line, mod in _imports(package) if mod.split(".")[0] == "gradio"]


def test_embeddings_imports_no_model_training_or_ui_code():
    banned = {"models", "training", "ui", "cli", "preprocessing", "gradio"}
    assert not [f"{f}:{line} imports {mod}" for f, line, mod in _imports("embeddings") if mod.split(".")[0] in banned]


@pytest.mark.parametrize("package", ["workspace", "jobs"])
def test_ground_floor_imports_no_project_package(package):
    others = set(LAYERS) - {package}
    assert not [f"{f}:{line} imports {mod}" for f, line, mod in _imports(package) if mod.split(".")[0] in others]
