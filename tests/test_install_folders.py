"""Fitting into an existing install: other checkpoint and embedding folders, named on the command
line or in the data folder's settings.toml, are read in place; new embeddings go to the first."""

from __future__ import annotations

import shutil

import pytest

from cli import main
from embeddings.formats import save_embedding
from embeddings.library import EmbeddingLibrary
from models.discovery import discover_models
from models.single_file import CONFIGS_DIR
from tests.formats_fixtures import make_embedding
from workspace.datadir import DataDir, SettingsError


def test_flags_then_settings_file_and_where_new_embeddings_go(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    (root / "settings.toml").write_text('models_dirs = ["../a1111/models"]\nembeddings_dirs = ["../comfy/emb"]\n')
    dd = DataDir.at(root, embeddings_dirs=[tmp_path / "a1111" / "embeddings"])
    assert dd.embeddings_dirs == ((tmp_path / "a1111" / "embeddings").resolve(), (tmp_path / "comfy" / "emb").resolve())
    assert dd.embeddings == (tmp_path / "a1111" / "embeddings").resolve()  # the first one receives new files
    assert dd.embedding_folders == [dd.embeddings, dd.root / "embeddings", (tmp_path / "comfy" / "emb").resolve()]
    assert dd.model_folders == [dd.models, (tmp_path / "a1111" / "models").resolve()]
    assert DataDir.at(tmp_path / "plain").embeddings == (tmp_path / "plain" / "embeddings").resolve()
    (root / "settings.toml").write_text('embeddings_dirs = "../one"\n')  # one folder as a string is fine
    assert DataDir.at(root).embeddings == (tmp_path / "one").resolve()


@pytest.mark.parametrize("text,why", [("models_dirs = [1]", "models_dirs must be a list of folder paths"),
                                      ("embeddings_dirs = [", "not readable as TOML")])
def test_a_bad_settings_file_names_the_file_and_the_key(tmp_path, text, why):
    (tmp_path / "settings.toml").write_text(text)
    with pytest.raises(SettingsError, match=why) as e:
        DataDir.at(tmp_path)
    assert "settings.toml" in str(e.value)


def test_library_reads_every_folder_and_the_earlier_folder_wins_a_clash(tmp_path):
    own, other = tmp_path / "own", tmp_path / "a1111"
    own.mkdir()
    other.mkdir()
    save_embedding(make_embedding("cat", {"clip_l": 32}, extremes=False), own / "cat.safetensors")
    save_embedding(make_embedding("cat", {"clip_l": 32}, seed=1, extremes=False), other / "cat.pt")
    save_embedding(make_embedding("dog", {"clip_l": 32}, extremes=False), other / "sub" / "dog.pt")
    lib = EmbeddingLibrary(own, {"clip_l": 32}, also=[other])
    lib.refresh()
    entries = {(e.name, e.path): e for e in lib.entries()}
    assert entries[("cat", own / "cat.safetensors")].ok
    clash = entries[("cat", other / "cat.pt")]
    assert clash.status == "skipped" and clash.reason == "name clash with cat.safetensors"
    assert lib.resolve("dog").path == other / "sub" / "dog.pt" and lib.get("dog") is not None
    lib.rename("dog", "puppy")  # a file in another listed folder may be changed where it is
    assert (other / "sub" / "puppy.pt").is_file()


def test_discovery_lists_checkpoints_of_another_models_folder(tmp_path):
    other = tmp_path / "a1111-models"
    shutil.copytree(CONFIGS_DIR / "sd1", other / "my-sd1")
    dd = DataDir.at(tmp_path / "data", models_dirs=[other]).ensure()
    found = {m.name: m for m in discover_models(dd, hf_cache=tmp_path / "no-cache")}
    assert found["my-sd1"].path == str(other / "my-sd1") and found["my-sd1"].family == "sd1"


def test_cli_generate_uses_an_embedding_from_another_folder(data, tiny_model, tmp_path, capsys):
    other = tmp_path / "comfy-embeddings"
    from embeddings.create import create_embedding

    save_embedding(create_embedding(tiny_model, "farcat", "cat", 1), other / "farcat.safetensors")
    out = tmp_path / "x.png"
    code = main(["generate", "farcat", "--data-dir", str(data.root), "--embeddings-dir", str(other), "--steps", "1",
                 "-o", str(out)])
    assert code == 0 and "embeddings used: farcat" in capsys.readouterr().out
    assert not (data.root / "embeddings" / "farcat.safetensors").exists()  # read in place, never copied
