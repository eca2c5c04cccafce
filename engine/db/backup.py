"""Online backup of an open index, and restore of a backup (issue 20, deliverable 4).

A backup is a consistent copy of the index at ONE log position L, taken by the writer process
while writes go on. What the copy holds, and why it is consistent:

- the store as of one LMDB read snapshot T (LMDB's own copy of that transaction, compacted),
  taken under core.commit_lock, where the committed store and core.manifest are the same
  version: T's manifest names the segments, the checkpoint C and the log head;
- every file of every segment T names: hard links where the file system allows (segments are
  immutable once renamed in; nothing writes into them again), else byte copies;
- the log files from the one holding C + 1 up to the active one, the active one only up to
  the byte where record L ends (LogWriter.written_end, read after T, so C <= L). Log files
  are always copied, never linked: the writer appends to the active one;
- CONFIG, read after L: its one rewrite (the first upsert fixing the dimension) happens before
  that upsert is logged, so a copied log never holds vectors its CONFIG cannot take.

Opening the copy replays records C + 1 .. L on top of T, as after a crash: it holds exactly the
writes logged up to L -- every write acknowledged before backup() started, and none logged
after L. T's manifest has no clean-close mark (the writer is open), so the copy's log need not
end with a CLOSE record.

Locks: core.flush_lock for the whole backup (no flush removes log files or moves the
checkpoint; close() waits for the backup, since it flushes first), core.merge_lock while the
segment folders are linked (no merge deletes them), core.commit_lock only while T is begun.
Writes go on meanwhile; they wait only when the memtable budget is full (a flush is due).

The copy is built in a hidden temporary folder beside `dest` and renamed into place when whole
and fsynced, so a crashed backup never looks like an index (its leftover ``.backup-*`` folder
can be removed by hand).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import lmdb

from lsmvec.wal import fsio, list_logs

from lsmvec.disk.catalog import check_index_name
from lsmvec.disk.config import config_exists, read_config
from lsmvec.disk.filenames import CONFIG, LOCK, SEGMENTS_DIR, STORE_DIR, WAL_DIR
from lsmvec.errors import (ClosedError, CorruptionError, IndexNotFoundError, InvalidArgumentError,
                           InvalidTypeError, StorageError, storage_error_from)
from lsmvec.db.segments import segment_folder

if TYPE_CHECKING:
    from lsmvec.db.core import IndexCore

log = logging.getLogger(__name__)

__all__ = ["backup", "restore", "check_destination"]

_CHUNK = 1 << 20
_NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES)
"""os.link failures that mean "this file system (or these two folders) cannot share the inode":
another device, a file system without hard links, too many links. The file is copied instead."""


def check_destination(dest: object, *, source: Path | None = None) -> Path:
    """`dest` as an absolute Path a new index folder can be renamed to. Raises, before anything
    is written: InvalidTypeError (not a path), InvalidIndexNameError (its last part is no index
    name, so no Client could open it), InvalidArgumentError (it exists and is not an empty
    folder, or it lies inside `source`, the index being copied)."""
    if not isinstance(dest, (str, os.PathLike)):
        raise InvalidTypeError(f"backup destination must be a str or os.PathLike, "
                               f"got {type(dest).__name__}")
    path = Path(os.path.abspath(dest))
    check_index_name(path.name)
    if source is not None:
        real, src = Path(os.path.realpath(path)), Path(os.path.realpath(source))
        if real == src or src in real.parents:
            raise InvalidArgumentError(f"backup destination {str(path)!r} lies inside the index "
                                       f"folder {str(source)!r}")
    if os.path.lexists(path):
        if not path.is_dir() or any(os.scandir(path)):
            raise InvalidArgumentError(f"backup destination {str(path)!r} exists and is not an "
                                       "empty folder")
    return path


def backup(core: "IndexCore", dest: object) -> dict[str, Any]:
    """Copy the open index `core` to the new index folder `dest` at one log position; see the
    module docstring. Returns {"lsn", "segments", "linked", "copied", "bytes", "path"}:
    the last log record the copy holds, its segment count, segment files hard-linked / copied,
    the bytes the copy's files hold (linked ones included)."""
    if core.closed:
        raise ClosedError(f"index {core.config.name!r} is closed")
    path = check_destination(dest, source=core.folder)
    core.writes.check()  # a poisoned log may hold records no caller saw acknowledged
    tmp = _temp_folder(path, "backup")
    counts = {"linked": 0, "copied": 0}
    failed = f"cannot back up index {core.config.name!r} to {str(path)!r}"
    with _cleaned_on_failure(tmp, failed):
        with core.flush_lock:
            if core.closed:  # closed while we waited for the lock
                raise ClosedError(f"index {core.config.name!r} is closed")
            with core.merge_lock:
                with core.commit_lock:  # the committed store is core.manifest's version
                    txn = _begin_snapshot(core.store.env)
                    manifest = core.manifest
                try:
                    lsn, active, size = core.wal.written_end()
                    core.writes.check()  # (poisoned before that end was read: see above)
                    _copy_logs(core.wal_dir, tmp / WAL_DIR, manifest, active, size)
                    _copy_file(core.folder / CONFIG, tmp / CONFIG)
                    if manifest.segments:
                        fsio.mkdir(tmp / SEGMENTS_DIR)
                    for info in manifest.segments:
                        src = segment_folder(core.folder, info.id)
                        _link_tree(src, tmp / SEGMENTS_DIR / src.name, counts)
                except BaseException:
                    txn.abort()
                    raise
            try:  # merges may remove segment folders again: the copy holds its links
                _copy_store(core.store.env, txn, tmp / STORE_DIR)
            finally:
                txn.abort()
        total = _sync_tree(tmp)
        _rename_in(tmp, path)
    log.info("index %s: backup at LSN %d to %s (%d segment files linked, %d copied, %d bytes)",
             core.folder.name, lsn, path, counts["linked"], counts["copied"], total)
    return {"lsn": lsn, "segments": len(manifest.segments), **counts, "bytes": total,
            "path": str(path)}


def restore(backup_folder: object, dest: object, index_key: bytes) -> dict[str, Any]:
    """Make the index folder `dest` from the backup folder `backup_folder` (which is left as it
    is): its files are copied (not linked: the restored index shares no inode with the backup)
    into a hidden folder beside `dest`, opened there with `index_key` (its log replayed and
    flushed), verified, closed and renamed into place. Raises, before anything is written:
    IndexNotFoundError (no CONFIG in `backup_folder`), WrongKeyError, and what
    check_destination raises; CorruptionError when the copy does not open or verify (nothing is
    left at `dest`). Returns {"count", "segments", "path"}."""
    from lsmvec.db.core import IndexCore  # opening is the core's business (no cycle at import)
    if not isinstance(backup_folder, (str, os.PathLike)):
        raise InvalidTypeError(f"backup folder must be a str or os.PathLike, "
                               f"got {type(backup_folder).__name__}")
    src = Path(os.path.abspath(backup_folder))
    if not config_exists(src):
        raise IndexNotFoundError(f"{str(src)!r} is not an index folder (no CONFIG)")
    read_config(src, index_key)  # WrongKeyError before anything is written
    path = check_destination(dest, source=src)
    tmp = _temp_folder(path, "restore")
    with _cleaned_on_failure(tmp, f"cannot restore {str(src)!r} to {str(path)!r}"):
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=False,
                        ignore=lambda _d, names: [n for n in names if n in (LOCK, "lock.mdb")])
        core = IndexCore(tmp, index_key)
        try:
            count = core.count()
            report = core.verify()
        finally:
            core.close()
        if not report["ok"]:
            raise CorruptionError(f"the restored copy fails verification: {report['problems']}",
                                  str(src))
        segments = len(core.manifest.segments)
        _sync_tree(tmp)
        _rename_in(tmp, path)
    return {"count": count, "segments": segments, "path": str(path)}


# -- the pieces ---------------------------------------------------------------------------------

@contextlib.contextmanager
def _cleaned_on_failure(tmp: Path, what: str) -> Iterator[None]:
    """The hidden folder `tmp` is removed when the block fails; an OSError that is not yet a
    StorageError becomes one, saying `what` could not be done."""
    try:
        yield
    except OSError as exc:
        fsio.remove_tree(tmp, ignore_errors=True)
        if isinstance(exc, StorageError):
            raise
        raise storage_error_from(exc, what) from None
    except BaseException:
        fsio.remove_tree(tmp, ignore_errors=True)
        raise


def _rename_in(tmp: Path, path: Path) -> None:
    """The whole, fsynced copy takes its name; the parent's entry is made durable."""
    fsio.rename(tmp, path)
    fsio.fsync_dir(path.parent)


def _temp_folder(dest: Path, what: str) -> Path:
    """A fresh hidden folder beside `dest` (its parents made): no Client lists or opens it."""
    try:
        fsio.make_dirs(dest.parent)
        tmp = dest.parent / f".{what}-{dest.name}-{secrets.token_hex(4)}.tmp"
        fsio.mkdir(tmp)
    except OSError as exc:
        raise storage_error_from(exc, f"cannot create a folder beside {str(dest)!r}") from None
    return tmp


def _copy_logs(wal_dir: Path, out: Path, manifest, active: Path, size: int) -> None:
    """Copy the log files replay of the copy needs: from the one holding checkpoint + 1 (and
    the recorded log head, should it be older) to `active`, that one cut at `size`. Older
    files hold only flushed records; newer ones (a roll after written_end) only records
    after L.
    The caller holds flush_lock: no file in that range is removed meanwhile."""
    fsio.mkdir(out)
    logs = [(first, p) for first, p in list_logs(wal_dir) if p.name <= active.name]
    need = manifest.checkpoint_lsn + 1
    start = 0
    while start + 1 < len(logs) and logs[start + 1][0] <= need:
        start += 1
    if manifest.log_head:
        start = min([start] + [i for i, (first, _p) in enumerate(logs)
                               if first == manifest.log_head])
    for _first, p in logs[start:]:
        _copy_file(p, out / p.name, limit=size if p == active else None)


def _copy_file(src: Path, dst: Path, limit: int | None = None) -> int:
    """Copy `src` (its first `limit` bytes) to the new file `dst`; returns the bytes copied.
    Not synced here (_sync_tree syncs the whole copy once)."""
    left = limit
    copied = 0
    with open(src, "rb") as fin, open(dst, "xb") as fout:
        while left is None or left > 0:
            block = fin.read(_CHUNK if left is None else min(_CHUNK, left))
            if not block:
                break
            fout.write(block)
            copied += len(block)
            if left is not None:
                left -= len(block)
    if limit is not None and copied != limit:  # the active file is never cut below its size
        raise CorruptionError(f"log file holds {copied} bytes, {limit} were written", str(src))
    return copied


def _link_tree(src: Path, dst: Path, counts: dict[str, int]) -> None:
    """Recreate the folder `src` at `dst`, each file a hard link when possible, else a copy."""
    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
            counts["linked"] += 1
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            shutil.copyfile(a, b)
            counts["copied"] += 1

    shutil.copytree(src, dst, copy_function=link_or_copy, symlinks=False)


def _begin_snapshot(env: lmdb.Environment) -> lmdb.Transaction:
    try:
        return env.begin()
    except lmdb.Error as exc:
        raise StorageError(0, f"cannot read the store: {exc}") from None


def _copy_store(env: lmdb.Environment, txn: lmdb.Transaction, out: Path) -> None:
    """LMDB's own copy of the snapshot `txn` (compacted: only the pages in use), into `out`."""
    fsio.mkdir(out)
    try:
        env.copy(str(out), compact=True, txn=txn)
    except lmdb.Error as exc:
        cause = getattr(exc, "errno", None) or 0  # LMDB's errors carry no errno: the text says
        raise StorageError(cause, f"cannot copy the store to {out}: {exc}") from None


def _sync_tree(root: Path) -> int:
    """fsync every file and folder under `root` (files first, then their folder, deepest
    first); returns the bytes its files hold. A linked file's data was synced when its
    segment was written; syncing it again is cheap and keeps this one rule for every file."""
    total = 0
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(folder, name)
            fd = os.open(path, os.O_RDONLY)
            try:
                total += os.fstat(fd).st_size
                fsio.FS.fsync(fd)
            finally:
                os.close(fd)
        fsio.fsync_dir(folder)
    return total
