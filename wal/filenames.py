"""Every file name the log directory may hold, each with its parse() inverse (LevelDB filename.h).

A log file is named by the LSN of its first record, zero-padded so names sort as numbers:
``00000000000000000042.log``. Names are never reused: LSNs only grow. Temporary files (written
by fsio.atomic_write, renamed into place) end in ``.tmp``; a crash can leave them behind, and the
owner of the directory removes them on open.
"""
from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

__all__ = ["LOG_SUFFIX", "TEMP_SUFFIX", "log_name", "parse_log_name", "list_logs", "temp_name",
           "is_temp_name"]

LOG_SUFFIX = ".log"
TEMP_SUFFIX = ".tmp"
_LSN_DIGITS = 20  # 2**64 - 1 has 20 digits
_LOG_NAME = re.compile(r"([0-9]{%d})\.log" % _LSN_DIGITS)


def log_name(first_lsn: int) -> str:
    """The name of the log file whose first record has `first_lsn`. Raises ValueError when the
    LSN is not a positive integer that fits in 20 digits."""
    if type(first_lsn) is not int or not 1 <= first_lsn < 10 ** _LSN_DIGITS:
        raise ValueError(f"a log file's first LSN must be an int in [1, 10**20), got {first_lsn!r}")
    return f"{first_lsn:0{_LSN_DIGITS}d}{LOG_SUFFIX}"


def parse_log_name(name: str) -> int | None:
    """The first LSN encoded in a log file name, or None when `name` is not a log file's name."""
    match = _LOG_NAME.fullmatch(name)
    if match is None:
        return None
    lsn = int(match.group(1))
    return lsn if lsn >= 1 else None


def list_logs(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(first_lsn, path) of every log file in `directory`, oldest first; [] when the directory
    does not exist. Other files are ignored."""
    found: list[tuple[int, Path]] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                lsn = parse_log_name(entry.name)
                if lsn is not None:
                    found.append((lsn, Path(entry.path)))
    except FileNotFoundError:
        return []
    found.sort()
    return found


def temp_name(final_name: str) -> str:
    """A fresh temporary name for a file that will be renamed to `final_name`."""
    return f".{final_name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for names made by temp_name (leftovers of an interrupted atomic write)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)
