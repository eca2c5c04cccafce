"""The background worker that runs flushes and merges off the write path.

It knows nothing of the index: the engine hands it a `step` callable that does one unit of
work (flush one frozen memtable, or one merge) and returns True while there is more to do.
Errors are logged and kept for the engine to report; the worker then waits for the next signal
instead of spinning on a failing disk.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Compactor:
    def __init__(self, step: Callable[[], bool], name: str = "lsmvec-compactor"):
        self._step = step
        self._wake = threading.Event()
        self._stop = False
        self._idle = threading.Condition()
        self._busy = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def signal(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            with self._idle:
                self._busy = True
            try:
                while not self._stop and self._step():
                    pass
                self.error = None
            except BaseException as exc:  # kept for stats(); the next signal retries
                log.exception("background compaction failed")
                self.error = exc
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()

    def wait_idle(self) -> None:
        """Block until no step is running (steps started later are not waited for)."""
        with self._idle:
            while self._busy:
                self._idle.wait()

    def stop(self) -> None:
        """Finish the running step, then end the thread."""
        self._stop = True
        self._wake.set()
        self._thread.join()
