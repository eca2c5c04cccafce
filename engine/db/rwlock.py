"""A readers-writer lock: many queries at once, one writer applying a batch in between.

Writer preference: once a writer waits, new readers queue behind it, so a stream of queries
cannot starve the group-commit leader. Not reentrant.

A query takes the read side with acquire_read() / release_read(): one plain mutex each and no
generator context manager (0.5 us per query instead of 2.7 us, measured on a 135 us MiniLM
query); read() is the same as a `with` block for the other readers.

`epoch` counts writer entries and exits (odd while a writer holds the lock): a reader of a few
plain fields may skip the lock altogether, seqlock style -- read `epoch`, read, and keep what
it read only when `epoch` is still the same even number (IndexCore.query_one; under the GIL
each field read is atomic, and objects a writer replaces stay alive while referenced).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator


class RWLock:
    __slots__ = ("_mutex", "_cond", "_readers", "_writer", "_waiting_writers", "epoch")

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0
        self.epoch = 0

    def acquire_read(self) -> None:
        with self._mutex:
            if not (self._writer or self._waiting_writers):  # the usual case: no wait
                self._readers += 1
                return
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            if self._readers == 0 and self._waiting_writers:
                self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._waiting_writers -= 1
            self._writer = True
            self.epoch += 1
        try:
            yield
        finally:
            with self._cond:
                self.epoch += 1
                self._writer = False
                self._cond.notify_all()
