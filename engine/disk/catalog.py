"""A folder of indexes: names, atomic create and delete, and the one-open-core-per-process rule.

Create builds the index under a hidden temporary name and renames it into place, so a crash
never leaves a half-made index under its real name; delete renames it away first, so a crash
mid-delete leaves only hidden garbage, collected by the next Client.

Every structural change holds the catalog lock (a flock on the root folder and on
.catalog.lock, see lockfile.py) from its first to its last step, waiting up to
STRUCTURE_TIMEOUT seconds for it: they are short. Garbage collection takes the same lock
without waiting and skips its work when the lock is held, so it never removes the
`.creating-*` folder of another process's create in flight; a leftover of a crashed process
(whose flock died with it) is collected by the next Client.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import secrets
import threading
from pathlib import Path

from lsmvec.wal import fsio

from lsmvec.disk.filenames import CONFIG, CREATING, DELETING, ROOT_LOCK
from lsmvec.errors import (IndexExistsError, IndexLockedError, IndexNotFoundError,
                     InvalidIndexNameError, InvalidTypeError, StorageError, storage_error_from)
from lsmvec.disk.lockfile import LOCK_NAME, LockFile

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,128}")
STRUCTURE_TIMEOUT = 60.0
"""Seconds a create or delete waits for another process's create or delete to finish."""


def check_index_name(name: object) -> str:
    """Raises InvalidIndexNameError unless 1-128 of [A-Za-z0-9_.-], not starting with '.'."""
    if not isinstance(name, str):
        raise InvalidTypeError(f"index_name must be a str, got {type(name).__name__}")
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise InvalidIndexNameError(
            f"invalid index_name {name[:140]!r}: use 1-128 letters, digits, '_', '-', '.', "
            "not starting with '.'")
    return name


class Catalog:
    """The root folder. Structural changes (create, delete) hold a root lock across processes."""

    def __init__(self, root: str | os.PathLike, *, read_only: bool = False):
        """`read_only`: a reader's view of the folder -- nothing is created or collected."""
        self.root = Path(root)
        self._lock = threading.Lock()
        if read_only:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error_from(exc, f"cannot create folder {self.root}") from None
        self.collect_garbage()

    def folder(self, name: str) -> Path:
        return self.root / check_index_name(name)

    def names(self) -> list[str]:
        out = []
        if not self.root.is_dir():  # a read-only client of a folder not made yet
            return out
        for entry in sorted(os.listdir(self.root)):
            if not entry.startswith(".") and (self.root / entry / CONFIG).is_file():
                out.append(entry)
        return out

    def exists(self, name: str) -> bool:
        return (self.folder(name) / CONFIG).is_file()

    def _root_lock(self, timeout: float = STRUCTURE_TIMEOUT) -> LockFile:
        """The catalog lock; waits up to `timeout` s. IndexLockedError when still held then."""
        try:
            return LockFile(self.root / ROOT_LOCK, f"the catalog {self.root}", timeout=timeout)
        except IndexLockedError:
            if timeout <= 0:
                raise
            raise IndexLockedError(f"the catalog {self.root} is busy: another process has held "
                                   f"its lock for {timeout:g} s (a create or delete of an index)"
                                   ) from None

    def collect_garbage(self) -> None:
        """Remove leftovers of creates and deletes that a crash interrupted.

        Only when no other process is changing the catalog: with its lock held elsewhere (a
        create or delete in flight) nothing is removed; a later Client collects the rest."""
        try:
            lock = self._root_lock(timeout=0)
        except (IndexLockedError, StorageError) as exc:  # busy, or a read-only folder
            log.debug("garbage collection of %s skipped: %s", self.root, exc)
            return
        try:
            try:
                entries = os.listdir(self.root)
            except OSError:
                return
            for entry in entries:
                if entry.startswith((CREATING, DELETING)):
                    shutil.rmtree(self.root / entry, ignore_errors=True)
                    log.info("removed leftover %s", entry)
        finally:
            lock.release()

    def create(self, name: str, populate) -> Path:
        """Make `name` by calling populate(tmp_folder) and renaming it in. Raises IndexExistsError."""
        final = self.folder(name)
        with self._lock:
            lock = self._root_lock()
            try:
                if final.exists():
                    raise IndexExistsError(f"index {name!r} already exists in {self.root}")
                tmp = self.root / f"{CREATING}{name}-{secrets.token_hex(4)}"
                try:
                    tmp.mkdir(mode=0o700)
                    populate(tmp)
                    fsio.fsync_dir(tmp)
                    os.rename(tmp, final)
                    fsio.fsync_dir(self.root)
                except OSError as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise storage_error_from(exc, f"cannot create index {name!r}") from None
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            finally:
                lock.release()
        return final

    def delete(self, name: str) -> None:
        """Rename the index away and remove its files. IndexNotFoundError; IndexLockedError
        when another process has the index open (its lock is taken while it is renamed)."""
        final = self.folder(name)
        with self._lock:
            lock = self._root_lock()
            try:
                if not (final / CONFIG).is_file():
                    raise IndexNotFoundError(f"index {name!r} not found in {self.root}")
                held = LockFile(final / LOCK_NAME, f"index {name!r}")  # refuse an open index
                try:
                    doomed = self.root / f"{DELETING}{name}-{secrets.token_hex(4)}"
                    try:
                        os.rename(final, doomed)
                        fsio.fsync_dir(self.root)
                    except OSError as exc:
                        raise storage_error_from(exc, f"cannot delete index {name!r}") from None
                finally:
                    held.release()
            finally:
                lock.release()
        shutil.rmtree(doomed, ignore_errors=True)  # a crash here leaves garbage for the next Client
