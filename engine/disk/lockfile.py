"""The LOCK: one writer process per index folder (and one structural change per catalog).

flock(2) locks belong to the open file description and vanish when the process dies, so a
lock left by `kill -9` never blocks the next open, and a second process gets a clear error.

A lock on a file that can be unlinked is not enough: if someone removes LOCK while process A
holds its flock, process B creates a new LOCK inode, locks that and writes too. So the
exclusion is a flock on the FOLDER itself (a non-empty folder cannot be unlinked from under
its holder), and the LOCK file inside it is still created and flocked (older lsmvec versions
lock only that file), then checked to still be the file at its path (fstat vs stat: the
classic pattern, retried when it lost a race). `check()` repeats that comparison cheaply (one
stat) so the write path can refuse writes once LOCK was removed or replaced under a live holder.
"""
from __future__ import annotations

import errno
import logging
import fcntl
import os
import time
from pathlib import Path

from lsmvec.disk.filenames import LOCK
from lsmvec.errors import ClosedError, IndexLockedError, StorageError, storage_error_from

LOCK_NAME = LOCK
log = logging.getLogger(__name__)

_ATTEMPTS = 8  # LOCK replaced between our open and our flock this often in a row: give up
_FIRST_DELAY = 0.0005
_MAX_DELAY = 0.02


def _write_pid(fd: int) -> None:
    """Name the holder in LOCK, for the IndexLockedError of the next process (not fsynced: the
    flock, not the text, is the lock; a holder killed leaves a stale pid no one trusts)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    except OSError as exc:  # a read-only or full file system: the lock still holds, unnamed
        log.debug("cannot name the holder in the LOCK file: %s", exc)


def holder_pid(path: str | os.PathLike) -> int | None:
    """The pid the holder of the lock at `path` wrote, or None when unreadable."""
    try:
        with open(path, "rb") as f:
            text = f.read(32)
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return None


class _Busy(Exception):
    """Another process holds the folder (or the LOCK file)."""


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _stat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


class LockFile:
    """An exclusive lock on `path.parent` (the folder) and on `path` (the LOCK file in it).

    `LockFile(path, what)` tries once and raises IndexLockedError when another process holds
    it; `timeout=` seconds > 0 waits for the lock that long (polling), for short structural
    changes. Raises StorageError when the folder or the file cannot be opened.
    """

    def __init__(self, path: str | os.PathLike, what: str, *, timeout: float = 0.0):
        self.path = Path(path)
        self.folder = self.path.parent
        self.what = what
        self._path = os.fspath(self.path)
        self._dir_fd: int | None = None
        self._fd: int | None = None
        self._ino = self._dev = -1
        self._lost = False
        deadline = time.monotonic() + max(0.0, float(timeout))
        delay = _FIRST_DELAY
        while True:
            try:
                self._acquire()
                return
            except _Busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    waited = f" for {timeout:g} s" if timeout > 0 else ""
                    pid = holder_pid(self.path)
                    by = f"process {pid}" if pid is not None else "another process"
                    raise IndexLockedError(f"{what} is open for writing in {by} (lock held on "
                                           f"{self.folder}{waited})", pid=pid) from None
                time.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_DELAY)

    def _acquire(self) -> None:
        for _ in range(_ATTEMPTS):
            try:
                dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                raise storage_error_from(exc, f"cannot open folder {self.folder}") from None
            fd = None
            try:
                self._flock(dir_fd, self.folder)
                try:
                    fd = os.open(self.path.name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                                 0o600, dir_fd=dir_fd)
                except OSError as exc:
                    raise storage_error_from(exc, f"cannot open lock file {self.path}") from None
                self._flock(fd, self.path)
                held, held_dir = os.fstat(fd), os.fstat(dir_fd)
                now, now_dir = _stat_or_none(self._path), _stat_or_none(os.fspath(self.folder))
                if now is not None and now_dir is not None and _same(held, now) and _same(held_dir, now_dir):
                    self._dir_fd, self._fd = dir_fd, fd
                    self._ino, self._dev = held.st_ino, held.st_dev
                    return
            except BaseException:
                if fd is not None:
                    os.close(fd)
                os.close(dir_fd)
                raise
            # the folder or the file was renamed, removed or replaced between open and flock
            os.close(fd)
            os.close(dir_fd)
        raise StorageError(errno.ESTALE, f"cannot lock {self.path}: it was replaced "
                                         f"{_ATTEMPTS} times while being locked")

    @staticmethod
    def _flock(fd: int, what: Path) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Busy() from None
        except OSError as exc:
            raise storage_error_from(exc, f"cannot lock {what}") from None

    def name_holder(self) -> None:
        """Write this process's pid into LOCK, for the IndexLockedError of the next opener.
        Called once the holder's open succeeded: a refused open leaves LOCK as it was."""
        if self._fd is not None:
            _write_pid(self._fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def check(self) -> None:
        """Raise unless the LOCK path still is the file this process locked (one os.stat).

        StorageError (errno ESTALE) when LOCK (or its folder) was removed or replaced while this
        process held it -- sticky: every later check() raises it too; ClosedError after release().
        """
        if self._lost or self._fd is None:
            self._refuse()
        try:
            st = os.stat(self._path)
        except OSError:
            st = None
        if st is None or st.st_ino != self._ino or st.st_dev != self._dev:
            self._lost = True
            self._refuse()

    def _refuse(self) -> None:
        if self._fd is None and not self._lost:
            raise ClosedError(f"the lock of {self.what} was released")
        raise StorageError(errno.ESTALE, f"the LOCK file {self.path} of {self.what} was removed or "
                                         "replaced while this process held it; writes are refused, "
                                         "reopen the index")

    def release(self) -> None:
        """Drop both flocks (closing a descriptor drops its flock). Idempotent. LOCK stays."""
        fd, self._fd = self._fd, None
        dir_fd, self._dir_fd = self._dir_fd, None
        if fd is not None:
            os.close(fd)
        if dir_fd is not None:
            os.close(dir_fd)
