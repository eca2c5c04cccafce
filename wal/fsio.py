"""The one seam through which lsmvec changes the file system.

Every side effect (create, write, sync, truncate, rename, remove, mkdir) -- of the log, CONFIG
and every segment file and folder -- goes through the
module-level ``FS`` object, looked up at call time (``fsio.FS.write_all(...)``), so a test can
replace ``fsio.FS`` with a subclass that fails the Nth call or drops unsynced bytes (LevelDB's
fault_injection_test). Methods raise plain OSError; callers wrap it with
``errors.storage_error_from`` where they know what they were doing. Syncs call ``os.fsync`` /
``os.fdatasync`` through the ``os`` module at call time, so tests may also monkeypatch those.

Durability rules followed here (ALICE, OSDI'14): a new or renamed file's directory entry is
durable only after its directory is fsynced; a failed fsync is final (see LogPoisonedError).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from .errors import storage_error_from
from .filenames import temp_name
from .format import Buffer

__all__ = ["FileSystem", "FS", "fsync_dir", "make_dirs", "mkdir", "remove", "remove_tree",
           "rename", "atomic_write"]

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


class FileSystem:
    """Real file-system operations. Subclass and assign to ``fsio.FS`` to inject faults."""

    def open_for_append(self, path: str | os.PathLike[str], *, exclusive: bool) -> int:
        """A write-only, append-mode fd, creating the file (mode 0600). With exclusive=True,
        raises FileExistsError when the file exists."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_CLOEXEC
        if exclusive:
            flags |= os.O_EXCL
        return os.open(path, flags, 0o600)

    def write_all(self, fd: int, buffers: Sequence[Buffer]) -> None:
        """Write every buffer, in order, with as few writev calls as possible; loops over short
        writes. On error some prefix may have been written (the caller truncates it away)."""
        views: list[Buffer] = [b if isinstance(b, bytes) else memoryview(b).cast("B")
                               for b in buffers]
        i, count = 0, len(views)
        while i < count:
            written = os.writev(fd, views[i:i + _IOV_MAX])
            if written == 0 and any(len(v) for v in views[i:i + _IOV_MAX]):
                raise OSError(errno.EIO, "write made no progress")
            while i < count and written >= len(views[i]):
                written -= len(views[i])
                i += 1
            if written:
                views[i] = memoryview(views[i])[written:]

    def fdatasync(self, fd: int) -> None:
        """Flush a file's data and the metadata needed to read it back (its size)."""
        sync = getattr(os, "fdatasync", None) or os.fsync  # macOS has no fdatasync
        sync(fd)

    def fsync(self, fd: int) -> None:
        os.fsync(fd)

    def fsync_dir(self, path: str | os.PathLike[str]) -> None:
        """Make the directory's entries (created, renamed, removed files) durable."""
        fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def truncate_file(self, path: str | os.PathLike[str], size: int) -> None:
        """Cut a closed file to `size` bytes and fsync it."""
        fd = os.open(path, os.O_WRONLY | _O_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def close(self, fd: int) -> None:
        os.close(fd)

    def rename(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        """Atomically replace `dst` by `src` (same directory); fsync the directory afterwards."""
        os.replace(src, dst)

    def remove(self, path: str | os.PathLike[str]) -> None:
        os.remove(path)

    def remove_tree(self, path: str | os.PathLike[str]) -> None:
        """Delete a folder and everything in it (no-op when it is absent). Not fsynced: a
        removal that a power cut undoes leaves a folder the owner collects again."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)

    def mkdir(self, path: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
        """Create one folder (mode 0700); its parent is NOT fsynced (make_dirs does that, or
        the caller fsyncs the parent once, e.g. after renaming the folder into place)."""
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not (exist_ok and os.path.isdir(path)):
                raise

    def make_dirs(self, path: str | os.PathLike[str]) -> None:
        """Create `path` and missing parents (mode 0700), fsyncing the parent of each one
        created so the new entries survive power loss. No-op when it exists."""
        path = Path(path)
        missing: list[Path] = []
        while not path.exists():
            missing.append(path)
            if path.parent == path:
                break
            path = path.parent
        for directory in reversed(missing):
            try:
                self.mkdir(directory)
            except FileExistsError:
                continue
            self.fsync_dir(directory.parent)


FS = FileSystem()


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """FS.fsync_dir; raises OSError."""
    FS.fsync_dir(path)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """FS.make_dirs; raises OSError."""
    FS.make_dirs(path)


def mkdir(path: str | os.PathLike[str], *, exist_ok: bool = False) -> None:
    """FS.mkdir; raises OSError."""
    FS.mkdir(path, exist_ok=exist_ok)


def remove(path: str | os.PathLike[str]) -> None:
    """FS.remove; raises OSError."""
    FS.remove(path)


def remove_tree(path: str | os.PathLike[str], *, ignore_errors: bool = False) -> None:
    """FS.remove_tree; raises OSError unless ignore_errors (best-effort cleanup after a
    failure that is being reported)."""
    try:
        FS.remove_tree(path)
    except OSError:
        if not ignore_errors:
            raise


def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """FS.rename (files or folders); raises OSError. Fsync the parent afterwards."""
    FS.rename(src, dst)


def atomic_write(path: str | os.PathLike[str], data: Buffer) -> None:
    """Replace `path` by `data` all or nothing: temp file, fsync, rename, fsync the directory.
    Raises StorageError / StorageFullError; the old file is then untouched."""
    path = Path(path)
    tmp = path.with_name(temp_name(path.name))
    fs = FS
    try:
        fd = fs.open_for_append(tmp, exclusive=True)
        try:
            fs.write_all(fd, (data,))
            fs.fsync(fd)
        finally:
            fs.close(fd)
        fs.rename(tmp, path)
        fs.fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):  # best effort: the original error is what matters
            fs.remove(tmp)
        raise storage_error_from(exc, f"cannot write {path}") from None
