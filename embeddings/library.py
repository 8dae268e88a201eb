"""The embeddings library: every embedding file under one folder, and why any of them is not usable.

A1111 reloads only when the top folder's mtime changes and lets the last file loaded win a name
clash, in filesystem order. Here:

- `refresh()` rescans recursively every time it is called and is cheap: a file is re-read only
  when its (size, mtime) changed; deleted files drop out. No restart is ever needed.
- Every file gets an entry. A skipped one says why: unreadable, unknown layout, several terms,
  contains NaN/inf, width 768 does not match the model's 1280, bad name, name clash.
- Name clashes are resolved the same way every time: names compare case-insensitively (CLIP
  lower-cases, so `Foo` and `foo` are the same prompt word); among files with the same name the
  one nearest the top folder wins, then the first by path (sorted, case-sensitive). The others
  are skipped with "name clash with <winner path>".
- Names whose tokens begin with another name's tokens (A1111's `name-200` / `name-2000` trap) are
  reported as warnings on both entries (needs a tokenizer).
- "Which file is embedding X" has one answer, `EmbeddingLibrary.resolve`: the trainer, the UI and
  the CLI all ask it, so a name means the same file everywhere, and the file prompts use.

Hidden files and folders (our atomic temp files start with '.'), `*.preview.*` images and
`.optim` files are not embeddings and are not listed. The `.trash` folder holds deleted files.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from embeddings.embedding import Embedding, EmbeddingError, EmbeddingFileError
from embeddings.formats import EMBEDDING_SUFFIXES, is_image_format, load_embedding, save_embedding
from embeddings.formats.diffusers_format import pair_paths
from embeddings.formats.png_embed import find_data_blocks
from embeddings.kinds import kind_of
from embeddings.names import clean_name, shadowing_pairs, validate_name
from workspace.atomic import atomic_write_with, remove_stale_temps

TRASH = ".trash"
_PAIR_SUFFIXES = (".bin", ".safetensors")


def _pair_neighbours(path: Path) -> list[Path]:
    """Files that could be the other half of a diffusers SDXL pair with `path`."""
    if path.suffix.lower() not in _PAIR_SUFFIXES:
        return []
    stem = path.stem
    out = [path.with_name(f"{stem}_2{s}") for s in _PAIR_SUFFIXES]
    if stem.endswith("_2") and len(stem) > 2:
        out += [path.with_name(f"{stem[:-2]}{s}") for s in _PAIR_SUFFIXES]
    return out


@dataclass
class LibraryEntry:
    """One file in the library, usable (`status == "ok"`) or not (`"skipped"`, with `reason`)."""

    name: str
    path: Path
    format: str | None
    num_vectors: int | None
    widths: dict[str, int]
    family: str | None
    step: int | None
    status: str  # "ok" or "skipped"
    reason: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    # What the file holds; None when it could not be read (`reason` says why). Shared with the
    # library's cache: treat it as read-only (`.copy()` to change it).
    embedding: Embedding | None = field(default=None, repr=False, compare=False)
    kind: str = "standard"  # embeddings.kinds: how the vectors condition the UNet
    layer_groups: int | None = None  # per-layer kinds: how many layer groups hold their own vectors

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def require_embedding(self) -> Embedding:
        """The embedding in this file, usable or not; EmbeddingFileError naming the file if unreadable."""
        if self.embedding is None:
            raise EmbeddingFileError(self.path, self.reason or "cannot be read")
        return self.embedding

    def row(self) -> dict[str, Any]:
        """A flat, JSON-able summary (for tables in the UI and `--json` output)."""
        return {
            "name": self.name,
            "path": str(self.path),
            "format": self.format,
            "vectors": self.num_vectors,
            "kind": self.kind,
            "layer_groups": self.layer_groups,
            "widths": dict(self.widths),
            "family": self.family,
            "step": self.step,
            "status": self.status,
            "reason": self.reason,
            "warnings": list(self.warnings),
        }


@dataclass
class _Cached:
    stamp: tuple[int, int]  # (size, mtime_ns)
    embedding: Embedding | None
    error: str | None


class EmbeddingLibrary:
    """Embedding files under `folder` and any `also` folders (an A1111 or ComfyUI embeddings
    folder, read where it is: nothing is copied). New files (add, create) go to `folder`; a name
    clash between folders is resolved like one within a folder, the earlier folder first.
    `widths` (a model's encoder widths) decides which fit; `tokenizer` enables name checks and
    shadowing warnings. Safe to share between threads."""

    def __init__(self, folder: str | Path, widths: dict[str, int] | None = None, tokenizer=None, *,
                 also: tuple[str | Path, ...] | list[str | Path] = ()):
        self.folder = Path(folder)
        self.folders = [self.folder] + [Path(f) for f in also if Path(f) != self.folder]
        self.widths = dict(widths) if widths else None
        self.tokenizer = tokenizer
        self._cache: dict[Path, _Cached] = {}
        self._entries: list[LibraryEntry] = []
        self._lock = threading.RLock()

    @classmethod
    def for_data(cls, data_dir: Any, widths: dict[str, int] | None = None, tokenizer=None) -> EmbeddingLibrary:
        """The library of a data folder (workspace.DataDir): every embeddings folder it names, new
        files into `data_dir.embeddings`."""
        folders = data_dir.embedding_folders
        return cls(folders[0], widths, tokenizer, also=folders[1:])

    # ------------------------------------------------------------------ scanning
    def set_model(self, widths: dict[str, int] | None, tokenizer=None) -> None:
        """Switch the model the library checks against (no files are re-read)."""
        with self._lock:
            self.widths = dict(widths) if widths else None
            self.tokenizer = tokenizer
            self._entries = self._build_entries()

    def _scan(self) -> list[Path]:
        found: list[Path] = []
        for folder in self.folders:
            if not folder.is_dir():
                continue
            remove_stale_temps(folder, recursive=True)  # a killed save's litter (linked folders: never)
            for root, dirs, files in os.walk(folder, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in sorted(files):
                    if f.startswith(".") or ".preview." in f.lower():
                        continue
                    if Path(f).suffix.lower() in EMBEDDING_SUFFIXES:
                        found.append(Path(root) / f)
        return found

    def _home(self, path: Path) -> tuple[int, Path] | None:
        """(index, folder) of the listed folder that holds `path`, or None."""
        for i, folder in enumerate(self.folders):
            try:
                path.relative_to(folder)
                return i, folder
            except ValueError:
                continue
        return None

    def refresh(self) -> None:
        """Rescan the folder; re-read only new or changed files; forget deleted ones."""
        with self._lock:
            stamps: dict[Path, tuple[int, int]] = {}
            for path in self._scan():
                try:
                    st = path.stat()
                except OSError:
                    try:
                        st = path.lstat()  # a link whose target is gone: listed, with the reason
                    except OSError:
                        continue  # deleted since the listing: nothing to show
                stamps[path] = (st.st_size, st.st_mtime_ns)
            changed = {p for p, s in stamps.items() if p not in self._cache or self._cache[p].stamp != s}
            changed |= {p for p in self._cache if p not in stamps}
            # A diffusers SDXL pair (X + X_2) reads as one: when one half changes, re-read the other.
            for p in list(changed):
                for other in _pair_neighbours(p):
                    self._cache.pop(other, None)
            for p in list(self._cache):
                if p not in stamps or p in changed:
                    del self._cache[p]
            for path, stamp in stamps.items():
                if path not in self._cache:
                    self._cache[path] = self._read(path, stamp)
            self._entries = self._build_entries()

    @staticmethod
    def _read(path: Path, stamp: tuple[int, int]) -> _Cached:
        """Load one file; any failure becomes the reason it is skipped."""
        try:
            return _Cached(stamp, load_embedding(path), None)
        except EmbeddingError as e:
            return _Cached(stamp, None, getattr(e, "reason", str(e)))
        except Exception as e:  # noqa: BLE001 - one bad file must not stop the scan
            return _Cached(stamp, None, f"cannot read ({type(e).__name__}: {str(e)[:200]})")

    def _make_entry(self, path: Path, cached: _Cached) -> LibraryEntry:
        """The entry for one file on its own (name clashes are decided over all entries later)."""
        emb = cached.embedding
        if emb is None:
            return LibraryEntry(
                name=path.stem, path=path, format=None, num_vectors=None, widths={}, family=None, step=None,
                status="skipped", reason=cached.error,
            )
        reason = None
        if not emb.is_finite():
            reason = "contains NaN/inf"
        elif self.widths is not None:
            reason = emb.mismatch_reason(self.widths)
        if reason is None and self.tokenizer is not None:
            try:
                validate_name(emb.name, self.tokenizer)
            except EmbeddingError as e:
                reason = str(e)
        return LibraryEntry(
            name=emb.name, path=path, format=emb.metadata.get("format"), num_vectors=emb.num_vectors,
            widths=emb.widths, family=emb.family, step=emb.step, status="skipped" if reason else "ok",
            reason=reason, metadata=dict(emb.metadata), embedding=emb, kind=emb.kind,
            layer_groups=len(kind_of(emb).describe(emb).get("groups", [])) or None,
        )

    def _build_entries(self) -> list[LibraryEntry]:
        entries = [self._make_entry(path, cached) for path, cached in self._cache.items()]
        self._resolve_clashes(entries)
        self._mark_shadowing(entries)
        entries.sort(key=lambda e: (e.status != "ok", e.name.casefold(), self._rank(e.path)))
        return entries

    def _rank(self, path: Path) -> tuple[int, int, str]:
        home = self._home(path)
        if home is None:
            return (len(self.folders), len(path.parts), path.as_posix())
        rel = path.relative_to(home[1])
        return (home[0], len(rel.parts), rel.as_posix())

    def _resolve_clashes(self, entries: list[LibraryEntry]) -> None:
        groups: dict[str, list[LibraryEntry]] = {}
        for e in entries:
            if e.ok:
                groups.setdefault(e.name.casefold(), []).append(e)
        for group in groups.values():
            if len(group) < 2:
                continue
            group.sort(key=lambda e: self._rank(e.path))
            winner = group[0]
            for loser in group[1:]:
                loser.status = "skipped"
                loser.reason = f"name clash with {self._display(winner.path)}"
                winner.warnings.append(f"same name as {self._display(loser.path)}, which is not used")

    def _mark_shadowing(self, entries: list[LibraryEntry]) -> None:
        if self.tokenizer is None:
            return
        ok = {e.name: e for e in entries if e.ok}
        for short, long in shadowing_pairs(self.tokenizer, list(ok)):
            ok[short].warnings.append(f"'{long}' starts with this name's tokens: in prompts the longer name wins")
            ok[long].warnings.append(f"starts with the tokens of '{short}': check prompts use the name you mean")

    def _display(self, path: Path) -> str:
        home = self._home(path)
        if home is None:
            return str(path)
        rel = path.relative_to(home[1]).as_posix()
        return rel if home[0] == 0 else str(path)

    # ------------------------------------------------------------------ queries
    def entries(self) -> list[LibraryEntry]:
        """Usable entries first, then skipped ones, each sorted by name (as of the last refresh)."""
        with self._lock:
            return list(self._entries)

    def skipped(self) -> list[LibraryEntry]:
        return [e for e in self.entries() if not e.ok]

    def _named(self, name: str) -> LibraryEntry | None:
        """The entry a name means, first rule that matches:

        1. the usable embedding called `name`, exact case, then any case (as prompts match it);
        2. a skipped file with that embedded name, any case (its reason says why it is skipped);
        3. a file whose stem is `name`, any case (an image embedding whose stored name differs
           from its file name, or the other half of a diffusers pair), usable ones first.

        Several files in one rule: the nearest the top folder wins, then the first by path, the
        same rule that decides name clashes, so a name means the file prompts use.
        """
        key = name.casefold()
        entries = self.entries()
        for pred in (
            lambda e: e.ok and e.name == name,
            lambda e: e.ok and e.name.casefold() == key,
            lambda e: e.name.casefold() == key,
            lambda e: e.path.stem.casefold() == key,
        ):
            found = [e for e in entries if pred(e)]
            if found:
                return min(found, key=lambda e: (not e.ok, self._rank(e.path)))
        return None

    def _for_file(self, path: Path) -> LibraryEntry:
        """The library's entry for a file, or (a file it has not scanned) one read on its own."""
        target = path.resolve()
        for e in self.entries():
            if e.path.resolve() == target:
                return e
        return self._make_entry(path, self._read(path, (0, 0)))

    def resolve(self, spec: str) -> LibraryEntry:
        """Which file is embedding `spec`: the one answer the trainer, the UI and the CLI use.

        First rule that matches: (1) a path to a file, absolute or relative to the library folder;
        (2) a name in the library (embedded name, then file stem; see `_named`), searched in every
        sub-folder with the clash rule; (3) a path relative to the working directory. A name in
        the library wins over a stray file of that name where the program happens to run.

        The entry may be skipped (NaN, wrong width, unreadable: `reason`); `require_embedding()`
        gives its embedding or an error naming the file. Raises EmbeddingError naming the folder
        when nothing matches.
        """
        spec = (spec or "").strip()
        if not spec:
            raise EmbeddingError("no embedding given: name one in the library or give a file")
        given = Path(spec).expanduser()
        if (self.folder / given).is_file():
            return self._for_file(self.folder / given)
        with self._lock:
            self.refresh()
            entry = self._named(spec)
        if entry is not None:
            return entry
        if given.is_file():
            return self._for_file(given)
        raise EmbeddingError(f"no embedding called {spec!r} in {self.folder}: no file at that path, "
                             "and no embedding or file of that name in any of its folders")

    def _resolve_own(self, spec: str) -> LibraryEntry:
        """`resolve`, for changes: a file outside the library folder is refused, never touched."""
        entry = self.resolve(spec)
        if not any(f.resolve() in entry.path.resolve().parents for f in self.folders):
            raise EmbeddingError(f"{entry.path} is not in the library folder {self.folder}")
        return entry

    def get(self, name: str) -> Embedding | None:
        """The usable embedding `name` means (see `_named`), or None.

        The object is shared with the library's cache: treat it as read-only (`.copy()` to train)."""
        entry = self._named(name)
        return entry.embedding if entry is not None and entry.ok else None

    def loaded(self) -> dict[str, Embedding]:
        """Usable embeddings by name: what prompts may use."""
        return {e.name: e.embedding for e in self.entries() if e.ok and e.embedding is not None}

    def shadowing(self) -> list[tuple[str, str]]:
        """(short, long) name pairs among usable embeddings where `long` starts with `short`'s tokens."""
        if self.tokenizer is None:
            return []
        return shadowing_pairs(self.tokenizer, list(self.loaded()))

    # ------------------------------------------------------------------ changes
    def _files_of(self, entry: LibraryEntry) -> list[Path]:
        files = [entry.path]
        pair = entry.metadata.get("pair_file")
        if pair:
            files.append(entry.path.with_name(str(pair)))
        return files

    def _check_new_name(self, new_name: str, except_path: Path | None = None) -> str:
        new_name = (new_name or "").strip()
        if self.tokenizer is not None:
            validate_name(new_name, self.tokenizer)
        elif not clean_name(new_name) or clean_name(new_name) != new_name:
            raise EmbeddingError(f"name {new_name!r} must be letters, digits, '.', '_', '-' or spaces")
        for e in self.entries():
            if e.ok and e.name.casefold() == new_name.casefold() and e.path != except_path:
                raise EmbeddingError(f"name {new_name!r} is already used by {self._display(e.path)}")
        return new_name

    def rename(self, name: str, new_name: str) -> LibraryEntry:
        """Rename an embedding: its file(s) get the new stem; image embeddings are rewritten
        (their name lives inside). Refuses names already in use. Returns the new entry."""
        with self._lock:
            self.refresh()
            entry = self._resolve_own(name)
            new_name = self._check_new_name(new_name, except_path=entry.path)
            src = entry.path
            target = src.with_name(new_name + src.suffix)
            if target.exists() and target != src:
                raise EmbeddingError(f"{self._display(target)} already exists")
            if is_image_format(entry.format):
                self._rewrite_image(src, target.with_suffix(".png"), new_name)
                if target.with_suffix(".png") != src:
                    src.unlink()
                target = target.with_suffix(".png")
            else:
                files = self._files_of(entry)
                new_first = target
                moves = [(files[0], new_first)]
                if len(files) > 1:
                    moves.append((files[1], pair_paths(new_first)[1].with_suffix(files[1].suffix)))
                for a, b in moves:
                    if b.exists() and b != a:
                        raise EmbeddingError(f"{self._display(b)} already exists")
                for a, b in moves:
                    os.replace(a, b)
            self.refresh()
            return self._entry_for_path(target)

    def _rewrite_image(self, src: Path, target: Path, new_name: str) -> None:
        """Image names live inside the file: write a new PNG with the same picture (no new caption)."""
        emb = load_embedding(src)
        with Image.open(src) as im:
            picture = im.convert("RGB")
        found = find_data_blocks(picture)
        if found is not None:  # keep only the picture between the data blocks
            left, top, right, bottom = found[2]
            if right > left and bottom > top:
                picture = picture.crop((left, top, right, bottom))
        renamed = emb.copy(name=new_name)
        save_embedding(renamed, target, "png", preview=picture, caption=False)

    def _entry_for_path(self, path: Path) -> LibraryEntry:
        for e in self.entries():
            if e.path == path:
                return e
        raise EmbeddingError(f"{path.name} did not appear in the library")

    def delete(self, name: str) -> list[Path]:
        """Move an embedding's file(s) to `<folder>/.trash/` (recoverable). Returns the new locations."""
        with self._lock:
            self.refresh()
            entry = self._resolve_own(name)
            trash = self.folder / TRASH
            trash.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            moved = []
            for f in self._files_of(entry):
                if f.exists():
                    dest = trash / f"{stamp}-{f.name}"
                    n = 1
                    while dest.exists():
                        dest = trash / f"{stamp}-{n}-{f.name}"
                        n += 1
                    shutil.move(str(f), dest)
                    moved.append(dest)
            self.refresh()
            return moved

    def add_file(self, src_path: str | Path, *, overwrite: bool = False, filename: str | None = None,
                 subfolder: str | None = None) -> LibraryEntry:
        """Copy an (uploaded) embedding file into the library after checking it loads.

        Refuses broken files (the EmbeddingFileError names the file and the reason), NaN/inf
        values, an existing file of that name unless `overwrite`, and a name already used by a
        different file. `filename` overrides the stored file name (uploads often arrive under a
        temp name). Returns the new entry; it may be "skipped" when it does not fit the model.
        """
        src = Path(src_path)
        emb = load_embedding(src)
        if not emb.is_finite():
            raise EmbeddingFileError(src, "contains NaN/inf values; not added")
        fname = Path(filename or src.name).name
        folder = self.folder / subfolder if subfolder else self.folder
        target = folder / fname
        if folder.resolve() != self.folder.resolve() and self.folder.resolve() not in folder.resolve().parents:
            raise EmbeddingError(f"{subfolder!r} is outside the library folder")
        with self._lock:
            self.refresh()
            if target.exists() and not overwrite:
                raise EmbeddingError(f"{self._display(target)} already exists (replace it explicitly to overwrite)")
            # The name the copy will have: file stem, or the name inside an image.
            name = emb.name if is_image_format(emb.metadata.get("format")) else target.stem
            for e in self.entries():
                if e.ok and e.name.casefold() == name.casefold() and e.path != target:
                    raise EmbeddingError(f"an embedding called {name!r} already exists ({self._display(e.path)}); "
                                         "rename or delete it first")
            atomic_write_with(target, lambda tmp: shutil.copyfile(src, tmp))
            self.refresh()
            return self._entry_for_path(target)
