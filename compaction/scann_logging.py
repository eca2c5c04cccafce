"""ScaNN's native (C++, absl) log lines kept off the application's stderr.

Every training run of ScaNN 1.4.2 writes lines such as ``WARNING: All log messages before
absl::InitializeLog() is called are written to STDERR`` and ``I0000 00:00:... 5426
partitioner_factory_base.cc:58] Size of sampled dataset ...`` straight to file descriptor 2:
absl sends every message to stderr until ``absl::InitializeLog()`` is called, which nothing in
a Python process does. No environment variable changes that (TF_CPP_MIN_LOG_LEVEL,
GLOG_minloglevel and ABSL_MIN_LOG_LEVEL were tried: each is read by other libraries, not by
ScaNN's absl). ScaNN's extension module links its own absl and exports
``absl::SetMinLogLevel``: ``set_scann_log_level`` calls it through ctypes, once when ScaNN is
first imported by ``scann_assets``. Messages below the level are then dropped before they are
formatted, in this process and in the forked serialize child alike; no file descriptor is
touched. The default keeps ERROR and FATAL lines; ``LSMVEC_SCANN_LOG_LEVEL`` = 0 (INFO),
1 (WARNING), 2 (ERROR, the default) or 3 (FATAL) sets another level at import.
"""
from __future__ import annotations

import ctypes
import logging
import mmap
import os
import re

__all__ = ["DEFAULT_LEVEL", "set_scann_log_level"]

logger = logging.getLogger(__name__)

DEFAULT_LEVEL = 2
"""absl::LogSeverityAtLeast::kError: INFO and WARNING lines are dropped."""

_KNOWN_SYMBOLS = ("_ZN4absl12lts_2025012714SetMinLogLevelENS0_18LogSeverityAtLeastE",)
"""absl::SetMinLogLevel as ScaNN 1.4.2 exports it (absl LTS 2025-01-27)."""
_SYMBOL_RE = re.compile(rb"_ZN4absl(?:\d+lts_\d+)?14SetMinLogLevelENS0?_18LogSeverityAtLeastE")


def _set_min_log_level(library_path: str):
    """absl::SetMinLogLevel of the shared library at ``library_path`` (None if absent)."""
    lib = ctypes.CDLL(library_path)  # already loaded by ScaNN's import: the same handle
    names = list(_KNOWN_SYMBOLS)
    if not any(hasattr(lib, name) for name in names):  # another absl release: find its name
        with open(library_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            found = _SYMBOL_RE.search(m)
            names = [found.group().decode()] if found else []
    for name in names:
        if hasattr(lib, name):
            function = getattr(lib, name)
            function.argtypes, function.restype = [ctypes.c_int], None
            return function
    return None


def set_scann_log_level(level: int | None = None) -> bool:
    """Drop ScaNN's native log messages below ``level`` (0 INFO .. 3 FATAL; None: the
    LSMVEC_SCANN_LOG_LEVEL environment variable, else ERROR). True when it took effect; never
    raises (a ScaNN build without the symbol keeps its logging, which is logged at DEBUG)."""
    if level is None:
        raw = os.environ.get("LSMVEC_SCANN_LOG_LEVEL", "").strip()
        level = int(raw) if raw in ("0", "1", "2", "3") else DEFAULT_LEVEL
        if raw and raw not in ("0", "1", "2", "3"):
            logger.warning("LSMVEC_SCANN_LOG_LEVEL=%r is not 0..3; using %d", raw, level)
    try:
        from scann.scann_ops.py import scann_ops_pybind
        function = _set_min_log_level(scann_ops_pybind.scann_pybind.__file__)
    except (ImportError, AttributeError, OSError, ValueError) as exc:
        logger.debug("cannot set ScaNN's native log level: %s", exc)
        return False
    if function is None:
        logger.debug("ScaNN exports no absl::SetMinLogLevel; its native log lines stay on")
        return False
    function(int(level))
    return True
