"""`python -m lsmvec.tools.heartbeat_probe SECONDS`: a control heartbeat in its own process.

Sleeps 1 ms in a loop for SECONDS (or until SIGTERM) and prints, as JSON, every gap over
5 ms as [start, end] on the CLOCK_MONOTONIC clock that all processes share. It holds no GIL
in common with the process under test, so a gap it sees too was the machine's (a virtual CPU
descheduled by the host, a kernel stall), not that process's.
"""
from __future__ import annotations

import json
import signal
import sys
import time

__all__ = ["main"]

THRESHOLD_S = 0.005


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    end = time.monotonic() + float(args[0]) if args else float("inf")
    gaps: list[list[float]] = []
    stopped: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    last = time.monotonic()
    while last < end and not stopped:
        time.sleep(0.001)
        now = time.monotonic()
        if now - last > THRESHOLD_S:
            gaps.append([last, now])
        last = now
    json.dump(gaps, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
