"""Atomic writes: a kill at any moment leaves either the old file or the new one, never half.

This is the one home for safe writes. A write that fails with an OSError (a full disk, a file
size limit, a quota, a read-only or forbidden folder) removes its temp file, leaves the target
untouched, and raises `SaveError`: an OSError that keeps the errno and whose message names the
target file and says the plain reason ("disk full" for ENOSPC/EFBIG/EDQUOT). Callers decide what
a failed save means for them (a warning during training, the end of a preprocess job) without
parsing library error strings.

A kill (SIGKILL, power loss) between creating the temp file and renaming it leaves a hidden
`.<name>.<pid>-<random>.tmp` behind. `remove_stale_temps` is the one rule for cleaning those up:
a temp file is ours when its name has that shape, and stale when the process that wrote it (the
pid in its name) is gone, or is a newer process that reused the pid. Nothing else is touched.

Writers must let the OSError through. `torch.save` to a path or file object does not (it raises
a RuntimeError without an errno), so torch payloads are serialized to bytes first and written
with `atomic_write_bytes`.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DISK_FULL_ERRNOS = frozenset(
    e for e in (_errno.ENOSPC, _errno.EFBIG, getattr(_errno, "EDQUOT", None)) if e is not None
)

_REASONS = {
    _errno.ENOSPC: "disk full (no space left on device)",
    _errno.EFBIG: "disk full (file too large: the file system or a size limit refused it)",
    _errno.EROFS: "the folder is on a read-only file system",
    _errno.EACCES: "permission denied (the folder is not writable)",
    _errno.EPERM: "operation not permitted",
}
if hasattr(_errno, "EDQUOT"):
    _REASONS[_errno.EDQUOT] = "disk full (disk quota exceeded)"


class SaveError(OSError):
    """A file could not be saved. The target was left as it was; no temp file remains.

    Built like an OSError (`SaveError(errno, reason, target)`, so it pickles); `str()` is one
    line naming the file and the reason. `disk_full` tells callers whether retrying later (after
    freeing space) is the fix, as opposed to a permission problem.
    """

    @property
    def target(self) -> Path:
        return Path(self.filename)

    @property
    def reason(self) -> str:
        return str(self.strerror)

    @property
    def disk_full(self) -> bool:
        return self.errno in DISK_FULL_ERRNOS

    def __str__(self) -> str:
        return f"cannot save {self.filename}: {self.strerror}"

    @classmethod
    def from_os_error(cls, target: str | Path, error: OSError, tmp: str | Path | None = None) -> SaveError:
        """Wrap `error` (raised while writing `target` via `tmp`); a SaveError passes through.

        When the error is about another file (a writer that copies from a source that vanished),
        that file is named too, so the message does not blame the target for it.
        """
        if isinstance(error, SaveError):
            return error
        reason = plain_reason(error)
        other = error.filename
        if other is not None and str(other) not in (str(target), str(tmp)):
            reason = f"{reason}: {other}"
        return cls(error.errno, reason, str(target))


def plain_reason(error: OSError) -> str:
    """The reason a person can act on: "disk full (...)" for ENOSPC/EFBIG/EDQUOT, and so on."""
    if error.errno in _REASONS:
        return _REASONS[error.errno]
    return error.strerror or str(error) or error.__class__.__name__


def is_disk_full(error: BaseException) -> bool:
    """True for an OSError (SaveError included) that means the disk or a size limit is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success fsync it and rename it over target.

    Writers that only accept a path (safetensors, PIL) write to the yielded path.
    On any exception the temp file is removed and the target is untouched; an OSError comes out
    as `SaveError` naming `target` (other exceptions pass through as they are).
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_temp_stem(target.name)}.{os.getpid()}-", suffix=TEMP_SUFFIX,
                                   dir=target.parent)
    except OSError as e:
        raise SaveError.from_os_error(target, e) from e
    tmp_path = Path(tmp)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; saved files get ordinary permissions
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as e:
        _remove(tmp_path)
        raise SaveError.from_os_error(target, e, tmp_path) from e
    except BaseException:
        _remove(tmp_path)
        raise


TEMP_SUFFIX = ".tmp"
NAME_MAX = 255  # bytes per file name on the common file systems (ext4, APFS, NTFS in UTF-16 units)


def _temp_stem(name: str) -> str:
    """The target's name, cut (on a character boundary) so the temp name fits NAME_MAX: a target
    whose own name is legal must never fail because its temp name is 20 bytes longer."""
    room = NAME_MAX - len(f"..{os.getpid()}-12345678{TEMP_SUFFIX}")
    data = name.encode("utf-8")
    return name if len(data) <= room else data[:room].decode("utf-8", errors="ignore")
# `.<target name>.<pid>-<mkstemp's 8 random characters>.tmp`; before the pid was in the name:
# `.<target name>.<8 random characters>.tmp` (cleaned up only once it is a day old).
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?:(?P<pid>\d+)-)?[a-z0-9_]{8}\.tmp$")
UNKNOWN_WRITER_AGE_S = 24 * 3600


def remove_stale_temps(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Delete our own temp files in `folder` whose writer can no longer be writing; return them.

    Called when a folder is scanned or a job starts, so a kill leaves no hidden litter for long.
    A temp file of a process that is still alive (this one included: another thread may be
    writing it) is kept. Symlinks are never followed nor removed, and a file that cannot be
    removed is left alone: cleaning up must never fail the scan or the job that asked for it.
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
        for root, _dirs, files in walker:
            for name in files:
                if name.endswith(TEMP_SUFFIX) and name.startswith("."):
                    path = Path(root) / name
                    if is_stale_temp(path) and _try_remove(path):
                        removed.append(path)
    except OSError:
        pass
    return removed


def remove_if_stale_temp(path: str | Path) -> bool:
    """`remove_stale_temps` for one file met during a walk the caller makes anyway."""
    path = Path(path)
    return is_stale_temp(path) and _try_remove(path)


def is_stale_temp(path: Path) -> bool:
    """One of our temp files (by its name) whose writer is gone: see `remove_stale_temps`."""
    m = _TEMP_NAME.match(path.name)
    if m is None:
        return False
    try:
        st = path.lstat()
    except OSError:
        return False
    if not os.path.isfile(path) or os.path.islink(path):
        return False
    if m["pid"] is None:  # an older name without the writer: only when no write can take that long
        return time.time() - st.st_mtime > UNKNOWN_WRITER_AGE_S
    pid = int(m["pid"])
    if pid == os.getpid():
        return False
    if not _alive(pid):
        return True
    started = _process_start_time(pid)
    return started is not None and started > st.st_mtime + 1.0  # the pid was reused by a newer process


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else
    return True


def _process_start_time(pid: int) -> float | None:
    """When `pid` started (seconds since the epoch) on Linux; None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime, after the command name
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _try_remove(path: Path) -> bool:
    try:
        path.unlink()
    except OSError:
        return False
    return True


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    return atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_with(target: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp_path)` and move the result into place atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_folder_once(folder: Path, marker: str, stamp: dict, build: Callable[[Path], None]) -> Path:
    """`folder`, built by `build(staging)` unless its `marker` file already holds `stamp`.

    For folders made by a program rather than a user (built-in models, benchmark weights): the
    build goes into a hidden staging folder beside `folder`, the marker is written last, and the
    staging folder is renamed into place, so a kill mid-build leaves no half folder that looks
    finished, and a changed `stamp` (a new version, new weight hashes) rebuilds it."""
    folder = Path(folder)
    try:
        held = json.loads((folder / marker).read_text())
        if isinstance(held, dict) and all(held.get(k) == v for k, v in stamp.items()):
            return folder
    except (OSError, ValueError):
        pass
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(staging)
        (staging / marker).write_text(json.dumps(stamp))
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder
