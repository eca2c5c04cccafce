"""GcPauses: the garbage collector's pauses during a benchmark run, for the stall and group
commit benchmarks (a full collection here can take longer than what they measure)."""
from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["GcPauses"]


class GcPauses:
    """gc.callbacks hook: every collection's (start, end, generation, thread, ms), on
    time.monotonic."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int, str, float]] = []
        self._started: dict[int, float] = {}

    def __call__(self, phase: str, info: dict) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started[threading.get_ident()] = now
        else:
            t0 = self._started.pop(threading.get_ident(), now)
            self.pauses.append((t0, now, info["generation"], threading.current_thread().name,
                                (now - t0) * 1000))

    @contextmanager
    def installed(self) -> Iterator["GcPauses"]:
        gc.callbacks.append(self)
        try:
            yield self
        finally:
            gc.callbacks.remove(self)

    @property
    def seconds(self) -> float:
        """All pauses added up."""
        return sum(p[1] - p[0] for p in self.pauses)

    def overlapping(self, a: float, b: float) -> list[tuple[float, float, int, str, float]]:
        """The pauses over 1 ms that overlap [a, b]."""
        return [p for p in self.pauses if p[0] < b and p[1] > a and p[4] > 1.0]
