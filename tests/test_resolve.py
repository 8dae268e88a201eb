"""Which file is embedding X, which folder is dataset Y: one rule each, the same in every caller."""

from __future__ import annotations

import pytest

from embeddings.embedding import EmbeddingError, EmbeddingFileError
from embeddings.formats import save_embedding
from embeddings.library import EmbeddingLibrary
from tests.formats_fixtures import make_embedding
from workspace.datadir import DataDir, DatasetNotFoundError

TINY = {"clip_l": 32}


def _save(folder, rel: str, name: str | None = None, seed: int = 0):
    path = folder / rel
    return save_embedding(make_embedding(name or path.name.split(".")[0], TINY, seed=seed), path)


@pytest.fixture
def lib(tmp_path):
    root = tmp_path / "embeddings"
    _save(root, "cat.safetensors", seed=1)
    _save(root, "deep/er/owl.pt", seed=2)
    _save(root, "pics/file-stem.png", name="inside", seed=3)  # an image's name lives inside it
    return EmbeddingLibrary(root)


def test_by_embedded_name_stem_and_in_sub_folders(lib):
    assert lib.resolve("cat").path == lib.folder / "cat.safetensors"
    assert lib.resolve("CAT").path == lib.folder / "cat.safetensors"  # names match in any case, as in prompts
    assert lib.resolve("owl").path == lib.folder / "deep/er/owl.pt"
    assert lib.resolve("inside").path == lib.folder / "pics/file-stem.png"
    assert lib.resolve("file-stem").path == lib.folder / "pics/file-stem.png"
    entry = lib.resolve("owl")
    assert entry.ok and entry.require_embedding().equal(make_embedding("x", TINY, seed=2))


def test_by_path_absolute_relative_to_the_library_and_to_the_working_directory(lib, tmp_path, monkeypatch):
    assert lib.resolve("deep/er/owl.pt").path == lib.folder / "deep/er/owl.pt"
    outside = _save(tmp_path / "elsewhere", "loose.pt", seed=4)
    assert lib.resolve(str(outside)).path == outside
    assert lib.resolve(str(outside)).require_embedding().equal(make_embedding("x", TINY, seed=4))
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert lib.resolve("loose.pt").path.resolve() == outside.resolve()
    (tmp_path / "elsewhere" / "cat").write_bytes(outside.read_bytes())  # a stray file named like an embedding
    assert lib.resolve("cat").path == lib.folder / "cat.safetensors"  # the library's name wins


def test_clashes_follow_the_library_rule_and_match_what_prompts_use(tmp_path):
    root = tmp_path / "embeddings"
    _save(root, "b/dup.pt", seed=1)
    _save(root, "a/dup.safetensors", seed=2)
    lib = EmbeddingLibrary(root)
    assert lib.resolve("dup").path == root / "a/dup.safetensors"  # same depth: first by path
    _save(root, "Dup.pt", seed=3)  # nearer the top folder wins, whatever the case
    entry = lib.resolve("dup")
    assert entry.path == root / "Dup.pt"
    assert lib.loaded()["Dup"] is entry.embedding  # the very file prompts use
    loser = lib.resolve("b/dup.pt")  # a clash loser is still reachable by its path, and says why
    assert not loser.ok and "name clash with Dup.pt" in loser.reason


def test_not_found_names_the_folder_and_unreadable_files_name_the_file(lib):
    with pytest.raises(EmbeddingError, match=r"no embedding called 'dog' in .*embeddings"):
        lib.resolve("dog")
    with pytest.raises(EmbeddingError, match="no embedding given"):
        lib.resolve("  ")
    (lib.folder / "broken.pt").write_bytes(b"not a pickle")
    entry = lib.resolve("broken")
    assert not entry.ok and entry.embedding is None
    with pytest.raises(EmbeddingFileError, match=r"^broken\.pt: "):
        entry.require_embedding()


def test_changes_never_touch_a_file_outside_the_library(lib, tmp_path):
    outside = _save(tmp_path / "elsewhere", "loose.pt")
    with pytest.raises(EmbeddingError, match="not in the library folder"):
        lib.delete(str(outside))
    with pytest.raises(EmbeddingError, match="not in the library folder"):
        lib.rename(str(outside), "other")
    assert outside.is_file()
    lib.delete("deep/er/owl.pt")  # a path inside the library is fine
    with pytest.raises(EmbeddingError, match="no embedding called 'owl'"):
        lib.resolve("owl")


# ---------------------------------------------------------------------------------------------
# Dataset folders


def test_dataset_by_name_path_and_working_directory(tmp_path, monkeypatch):
    dd = DataDir.at(tmp_path / "data").ensure()
    (dd.datasets / "set").mkdir()
    other = tmp_path / "work" / "mine"
    other.mkdir(parents=True)
    assert dd.find_dataset("set") == dd.datasets / "set"
    assert dd.find_dataset(f" {other} ") == other
    monkeypatch.chdir(tmp_path / "work")
    assert dd.find_dataset("mine").resolve() == other.resolve()
    (tmp_path / "work" / "set").mkdir()  # a stray folder where the program runs
    assert dd.find_dataset("set") == dd.datasets / "set"  # the data folder's dataset wins


def test_dataset_not_found_says_where_it_looked(tmp_path):
    dd = DataDir.at(tmp_path / "data").ensure()
    with pytest.raises(DatasetNotFoundError, match=r"dataset 'nope': no such folder \(nor in .*datasets\)"):
        dd.find_dataset("nope")
    with pytest.raises(FileNotFoundError, match="no dataset folder given"):
        dd.find_dataset("")
    (dd.datasets / "afile").write_text("not a folder")
    with pytest.raises(DatasetNotFoundError):
        dd.find_dataset("afile")


# ---------------------------------------------------------------------------------------------
# The UI asks the same resolvers


def test_ui_context_uses_the_library_resolver(tmp_path, monkeypatch):
    from ui.state import AppContext

    ctx = AppContext(data=DataDir.at(tmp_path / "data").ensure())
    _save(ctx.data.embeddings, "sub/nested.pt")
    _save(ctx.data.embeddings, "pic.png", name="shown")
    assert ctx.embedding_names() == ["nested", "shown"]  # every sub-folder, names as prompts use them
    assert ctx.existing_embedding("NESTED") == ctx.data.embeddings / "sub/nested.pt"
    assert ctx.existing_embedding("pic") == ctx.data.embeddings / "pic.png"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stray").write_text("x")
    assert ctx.existing_embedding("stray") is None  # a file outside the library is never "the embedding"


def test_train_tab_checks_with_the_same_resolvers(tmp_path):
    from training.config import TrainConfig
    from ui.state import AppContext
    from ui.train_tab import check_inputs

    ctx = AppContext(data=DataDir.at(tmp_path / "data").ensure())
    _save(ctx.data.embeddings, "sub/deep.pt")
    (ctx.data.datasets / "set").mkdir()
    check_inputs(ctx, TrainConfig(embedding="deep", dataset="set"))
    with pytest.raises(Exception, match="no embedding called 'gone'"):
        check_inputs(ctx, TrainConfig(embedding="gone", dataset="set"))
    with pytest.raises(Exception, match="dataset 'gone': no such folder"):
        check_inputs(ctx, TrainConfig(embedding="deep", dataset="gone"))


def test_uploads_take_every_image_type_preprocessing_reads(tmp_path):
    from PIL import Image

    from preprocessing.images import IMAGE_SUFFIXES
    from ui.preprocess_tab import stage_uploads
    from ui.state import AppContext

    ctx = AppContext(data=DataDir.at(tmp_path / "data").ensure())
    files = []
    for suffix in IMAGE_SUFFIXES:
        path = tmp_path / "in" / f"img{suffix}"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
        files.append(str(path))
    staged = stage_uploads(ctx, files)
    assert sorted(p.suffix for p in staged.iterdir()) == sorted(IMAGE_SUFFIXES)
    assert {".tif", ".gif"} <= set(IMAGE_SUFFIXES)
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(Exception, match=r"None of the uploaded files is an image \(.*\.tif.*\.gif"):
        stage_uploads(ctx, [str(tmp_path / "notes.txt")])
