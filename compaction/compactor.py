"""The background worker that runs flushes and merges off the write path.

It knows nothing of the index: the engine hands it a `step` callable that does one unit of
work (flush one frozen memtable, or one merge) and returns True while there is more to do.
Errors are logged and kept for the engine to report; the worker then waits for the next signal
instead of spinning on a failing disk.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BACKGROUND_NICE = 10


@dataclass(frozen=True)
class BuildBudget:
    """How much of the machine one segment build may take: passed down from whoever asked
    for the build (``train()`` -> merge -> build -> ScaNN), never read from the environment."""

    training_threads: int = 1
    """ScaNN training threads (>= 1). Background merges: one -- at lowered priority they never
    hold more than one core against the application. ``train()``: every usable core."""
    caller_waits: bool = False
    """A caller waits for this build (``train()``): favour its wall time. The serialize fork then
    skips collapsing big mappings into huge pages first: that copy took 0.23-0.45 s of a
    60k x 384 train, 1.15 s after a 500k x 128 one and 1.63 s with a 1M x 128 searcher loaded
    (630 MB resident), to shorten the fork's one-off GIL pause from 15-18 ms to 4-5 ms there
    (scann_serialize) -- worth it for background merges, not for a train() the caller waits
    for."""

    def __post_init__(self) -> None:
        threads = self.training_threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"training_threads must be an int >= 1, got {threads!r}")

    @classmethod
    def for_caller(cls) -> "BuildBudget":
        """What an explicit ``train()`` gets: every usable core, wall time first."""
        return cls(training_threads=usable_cores(), caller_waits=True)


BACKGROUND = BuildBudget()
"""The background merger's budget: one training thread, fork pauses kept short."""


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; at least 1): the training threads
    of an explicit ``train()``, which the caller waits for. Background merges train with one
    thread, at lowered priority (``lower_thread_priority``), so they never hold more than one
    core against the application."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def background_nice() -> int:
    """How far background work lowers its threads' CPU priority (LSMVEC_BACKGROUND_NICE,
    default 10; 0 turns it off)."""
    try:
        return max(0, int(os.environ.get("LSMVEC_BACKGROUND_NICE", DEFAULT_BACKGROUND_NICE)))
    except ValueError:
        return DEFAULT_BACKGROUND_NICE


def _nice_drop() -> int:
    """background_nice() where it can apply (Linux, where nice is per thread); else 0."""
    return background_nice() if sys.platform.startswith("linux") else 0


def lower_thread_priority(drop: int | None = None) -> None:
    """Lower the calling thread's CPU priority (Linux: nice is per thread, and the threads it
    starts -- ScaNN's training pool, a forked child -- inherit it). Flushes, merges and
    training then yield the CPU to the application's own threads, an event loop above all,
    instead of delaying them by whole scheduler slices when the cores are busy (RocksDB
    lowers its compaction threads the same way). An unprivileged thread cannot raise it back:
    call this only in threads that do nothing else. `drop`: the caller's _nice_drop()."""
    drop = _nice_drop() if drop is None else drop
    if not drop:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + drop))
    except OSError as exc:
        log.debug("cannot lower background thread priority: %s", exc)


def run_in_background_thread(fn: Callable[[], T], name: str = "lsmvec-maintenance") -> T:
    """Run `fn` in a new thread of lowered priority and wait for it: returns its result or
    raises its error. For maintenance a caller asked for (train, compact, flush), whose
    caller's own thread must keep its priority."""
    drop = _nice_drop()
    if not drop:
        return fn()
    outcome: list = []

    def work() -> None:
        lower_thread_priority(drop)
        try:
            outcome.append((True, fn()))
        except BaseException as exc:  # re-raised in the caller
            outcome.append((False, exc))

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


class Helper(Generic[T]):
    """``fn()`` run by a helper thread (``in_background``) or right here, for a build to do
    two things at once. ``result()`` waits for it and returns its value or raises its error;
    ``wait()`` only waits. The helper inherits the calling thread's CPU priority (nice is per
    thread on Linux); ``idle``: it runs under SCHED_IDLE instead, on CPU time nothing else
    wants (Linux; elsewhere as it is)."""

    def __init__(self, fn: Callable[[], T], name: str, *, in_background: bool = True,
                 idle: bool = False) -> None:
        self._fn = fn
        self._idle = idle and in_background
        self._outcome: list = []
        self._thread = None
        if in_background:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()
        else:
            self._run()

    def _run(self) -> None:
        if self._idle and hasattr(os, "SCHED_IDLE"):
            try:
                os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE,
                                      os.sched_param(0))
            except OSError as exc:
                log.debug("cannot make a helper thread idle: %s", exc)
        try:
            self._outcome.append((True, self._fn()))
        except BaseException as exc:  # re-raised by result()
            self._outcome.append((False, exc))

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()

    def result(self) -> T:
        self.wait()
        ok, value = self._outcome[0]
        if not ok:
            raise value
        return value


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
        lower_thread_priority()
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
