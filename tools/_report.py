"""Small formatting helpers shared by the demo and the benchmark (CLI output only)."""
from __future__ import annotations

import io
import os
import re
import sys
import threading
from pathlib import Path
from typing import Sequence

from lsmvec.db.info import folder_bytes  # noqa: F401  (one walk: stats()["disk_bytes"]'s)


def seconds(value: float) -> str:
    """A duration with a unit that keeps 3 significant figures: 850 us, 12.3 ms, 4.56 s."""
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1.0:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s"


def rate(count: float, elapsed: float, unit: str) -> str:
    """`count / elapsed` with thousands separators, e.g. "123,456 rows/s"."""
    if elapsed <= 0:
        return f"inf {unit}/s"
    return f"{count / elapsed:,.0f} {unit}/s"


def mbytes(nbytes: float) -> str:
    return f"{nbytes / 1e6:,.1f} MB"


def folder_breakdown(folder: str | os.PathLike[str]) -> dict[str, int]:
    """{entry name: bytes} of each entry of `folder` (a sub-folder: its folder_bytes), e.g.
    an index's wal / store / segments, for a report or an assertion's message."""
    return {entry.name: folder_bytes(entry) if entry.is_dir() else entry.stat().st_size
            for entry in Path(folder).iterdir()}


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [list(header), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


# Native libraries (absl logging in C++) write INFO/WARNING lines such as "I0000
# 00:00:1796161115.265699 17868 partitioner_factory_base.cc:58] ..." straight to file
# descriptor 2. lsmvec itself turns ScaNN's off at import (compaction/scann_logging.py); this
# filter catches those of the peer libraries a benchmark loads. Errors (E...) and fatal lines
# (F...) are kept.
_NATIVE_LOG_LINE = re.compile(rb"^(?:[IW]\d{4} [\d:.]+ +\d+ [\w.\-/]+:\d+\] |"
                              rb"WARNING: All log messages before absl::InitializeLog\(\))")


class NativeLogFilter:
    """Context manager: hides native INFO/WARNING log lines written to fd 2; Python's own stderr
    (tracebacks, warnings, progress bars) keeps going to the terminal untouched.

    Python-level writes go to a new sys.stderr on a copy of the original fd; only what native
    code writes to fd 2 passes through a pipe, line by line, and is filtered there.
    enabled=False (a tool's --verbose) filters nothing and turns ScaNN's own INFO lines back on."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.hidden = 0
        self._saved_fd = -1
        self._thread: threading.Thread | None = None
        self._saved_stderr = sys.stderr

    def _pump(self, read_fd: int) -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for line in pipe:
                if _NATIVE_LOG_LINE.match(line):
                    self.hidden += 1
                else:
                    os.write(self._saved_fd, line)

    def __enter__(self) -> "NativeLogFilter":
        if not self.enabled:
            from lsmvec.compaction.scann_logging import set_scann_log_level
            set_scann_log_level(0)
            return self
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self._thread = threading.Thread(target=self._pump, args=(read_fd,), name="native-log-filter",
                                        daemon=True)
        self._thread.start()
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(self._saved_fd), "wb", buffering=0),
                                      encoding="utf-8", errors="replace", write_through=True)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.enabled or self._thread is None:
            return
        sys.stderr.flush()
        replaced, sys.stderr = sys.stderr, self._saved_stderr
        os.dup2(self._saved_fd, 2)  # closes the pipe's last write end: the pump sees EOF
        self._thread.join(timeout=5)
        os.close(self._saved_fd)
        replaced.close()
