"""Walking an LMDB store's pages in a child process, where a fault on damaged or missing pages
(SIGBUS past the end of a cut file; an assertion inside mdb_cursor_next) kills only the child.
LMDB keeps no page checksums, so this is how a store is proven readable before the engine trusts
it (engine/disk/store.py opens; engine/db/verify.py checks)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

__all__ = ["tables_within_file", "walk_in_child"]

log = logging.getLogger(__name__)

_WALK_CHILD = """
import sys, lmdb
env = lmdb.open(sys.argv[1], readonly=True, lock=False, max_dbs=4, subdir=True)
with env.begin() as txn:
    for name in (b"items", b"meta"):
        db = env.open_db(name, txn=txn, create=False)
        for key, value in txn.cursor(db=db):
            pass
"""
"""The walk a child runs: every key and value of both tables."""


def tables_within_file(path: Path) -> bool:
    """A data file shorter than its last page number is not always cut: LMDB never writes
    the pages a commit allocated and freed again (a big value rewritten or deleted in the
    same transaction; 150 of 200 such stores ended 1-8 pages short after a clean close,
    and cleanly closed indexes were refused as truncated). What matters is that every page
    the tables use is in the file: walked in a child, where reading past the end (SIGBUS)
    kills only the child. Run only for a short file."""
    try:
        done = subprocess.run([sys.executable, "-c", _WALK_CHILD, str(path)],
                              capture_output=True, timeout=600,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except (subprocess.TimeoutExpired, OSError):
        return False
    return done.returncode == 0


def walk_in_child(path: Path, timeout_s: float = 600.0) -> str | None:
    """Walk every page of both tables in a child process first: LMDB keeps no page
    checksums and, on some damaged pages, aborts the process from inside the C library
    (an assertion in mdb_cursor_next) where no exception can be raised. Returns None when
    the walk finished, else what went wrong (the caller must not walk the tree itself).
    Callers hold off store writes meanwhile (the child reads without a reader slot)."""
    try:
        done = subprocess.run([sys.executable, "-c", _WALK_CHILD, str(path)],
                              capture_output=True, text=True, timeout=timeout_s,
                              env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    except subprocess.TimeoutExpired:
        return f"walking the store took over {timeout_s:.0f} s"
    except OSError as exc:
        log.warning("cannot start the store walk child (%s); walking in-process", exc)
        return None
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        detail = done.stderr.strip().splitlines()[-1:] or [""]
        return f"LMDB killed the process walking its B-tree ({name}: {detail[0][:200]})"
    return None  # exit 0, or an LMDB error the in-process walk reports as CorruptionError
