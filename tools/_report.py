"""Small formatting helpers shared by the demo and the benchmark (CLI output only)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence


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


def folder_bytes(path: str | os.PathLike[str]) -> int:
    """Total size of the regular files under `path` (0 when it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).stat().st_size
            except FileNotFoundError:  # removed while we walked (a compaction): not counted
                continue
    return total


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: first column left-aligned, the others right-aligned."""
    cells = [list(header), *[list(map(str, row)) for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])
