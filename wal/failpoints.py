"""Named failpoints: crash or error sites a test can arm (RocksDB's kill points).

Unarmed, a failpoint is one dict lookup on an empty dict. Armed -- by `arm()` in-process or by
the environment variable LSMVEC_FAILPOINTS="name=action[@skip],..." read at import (for child
processes) -- it performs its action on the (skip+1)-th hit:
  crash   SIGKILL this process (what a power cut or kill -9 leaves behind)
  eio     raise OSError(EIO)      enospc  raise OSError(ENOSPC)
Error actions are accepted only at sites where the caller can fail cleanly (ERROR_SITES);
crash is accepted everywhere.
"""
from __future__ import annotations

import errno
import os
import signal
import threading

__all__ = ["SITES", "ERROR_SITES", "arm", "disarm", "hit", "hits"]

SITES = frozenset({
    "wal.after_write",            # group written, not yet synced
    "wal.after_sync",             # group synced, not yet applied / acknowledged
    "segment.before_rename",      # segment files written and fsynced under the temp name
    "segment.after_rename",       # segment folder renamed in, not yet in the manifest
    "flush.before_commit",        # segment in place, LMDB transaction not yet run
    "flush.after_commit",         # manifest committed, memory not yet switched
    "flush.before_wal_truncate",  # switched, old logs not yet removed
    "merge.before_commit",
    "merge.after_commit",
    "merge.removing_old",         # between removals of replaced segment folders
    "store.commit",               # before any LMDB write transaction
})
ERROR_SITES = frozenset({"wal.after_write", "segment.before_rename", "flush.before_commit",
                         "merge.before_commit", "store.commit"})
_ACTIONS = ("crash", "eio", "enospc")

_lock = threading.Lock()
_armed: dict[str, list] = {}  # name -> [action, remaining skips]
_hits: dict[str, int] = {}


def arm(name: str, action: str = "crash", skip: int = 0) -> None:
    """Arm `name`: the (skip+1)-th hit performs `action`. Raises ValueError for an unknown
    site or action, or an error action where the caller cannot fail cleanly."""
    if name not in SITES:
        raise ValueError(f"unknown failpoint {name!r}")
    if action not in _ACTIONS:
        raise ValueError(f"unknown failpoint action {action!r}")
    if action != "crash" and name not in ERROR_SITES:
        raise ValueError(f"failpoint {name!r} only supports 'crash'")
    with _lock:
        _armed[name] = [action, int(skip)]


def disarm(name: str | None = None) -> None:
    with _lock:
        if name is None:
            _armed.clear()
            _hits.clear()
        else:
            _armed.pop(name, None)


def hits(name: str) -> int:
    """How often an armed-or-counted site was reached (counted only while anything is armed)."""
    return _hits.get(name, 0)


def hit(name: str) -> None:
    """Mark a site; performs the armed action if this is its turn."""
    if not _armed:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        entry = _armed.get(name)
        if entry is None:
            return
        if entry[1] > 0:
            entry[1] -= 1
            return
        action = entry[0]
        del _armed[name]
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    code = errno.EIO if action == "eio" else errno.ENOSPC
    raise OSError(code, f"injected {action} at failpoint {name}")


def _arm_from_env() -> None:
    spec = os.environ.get("LSMVEC_FAILPOINTS", "")
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, rest = part.partition("=")
        action, _, skip = (rest or "crash").partition("@")
        arm(name, action, int(skip or 0))


_arm_from_env()
