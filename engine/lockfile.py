"""The LOCK file: one writer process per index.

flock(2) locks belong to the open file description and vanish when the process dies, so a
lock left by `kill -9` never blocks the next open, and a second process gets a clear error.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import IndexLockedError, storage_error_from

LOCK_NAME = "LOCK"


class LockFile:
    def __init__(self, path: Path, what: str):
        self.path = path
        try:
            self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage_error_from(exc, f"cannot open lock file {path}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise IndexLockedError(f"{what} is open in another process (lock held on {path})") from None
        except OSError as exc:
            os.close(self._fd)
            self._fd = None
            raise storage_error_from(exc, f"cannot lock {path}") from None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
