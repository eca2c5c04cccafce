"""Every name in a client folder and an index folder (LevelDB's filename.h). The log's own file
names live in wal/filenames.py and a segment's in compaction/filenames.py; this module names
the rest, and the folders those two fill.

    <root>/                     a Client folder
      .catalog.lock             ROOT_LOCK: held while an index is created or deleted
      .creating-<name>-<hex>/   CREATING: an index being built, renamed in when whole
      .deleting-<name>-<hex>/   DELETING: an index renamed away, being removed
      <index name>/
        CONFIG                  CONFIG: settings, key check, MAC
        LOCK                    LOCK: one writer process (flocked, with the folder itself)
        wal/                    WAL_DIR: the log files
        segments/               SEGMENTS_DIR: one folder per segment
        store/data.mdb          STORE_DIR, DATA_FILE: the LMDB store (and LMDB's lock.mdb)
"""
from __future__ import annotations

__all__ = ["ROOT_LOCK", "CREATING", "DELETING", "CONFIG", "LOCK", "WAL_DIR", "SEGMENTS_DIR",
           "STORE_DIR", "DATA_FILE"]

ROOT_LOCK = ".catalog.lock"
CREATING = ".creating-"
DELETING = ".deleting-"
CONFIG = "CONFIG"
LOCK = "LOCK"
WAL_DIR = "wal"
SEGMENTS_DIR = "segments"
STORE_DIR = "store"
DATA_FILE = "data.mdb"
