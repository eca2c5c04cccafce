"""Every file and folder name of a segment, in one place, with ``parse`` inverses.

A segment is an immutable folder ``seg-<id>`` under ``<index>/segments/``. It is built in a
temporary sibling ``tmp-seg-<id>-<nonce>`` and renamed into place; anything named ``tmp-*`` is
garbage from a crash. Names are never reused (segment ids only grow), so a sealed file bound to
its name and segment id can never be confused with an older one.

Inside a segment folder only the names below may exist. ``Segment.open`` refuses any other name
before ScaNN sees the folder: ScaNN 1.4.2's ``load_searcher`` unpickles ``scann_docids.pkl``
when it exists, so that name in particular is never allowed (see reliability.md).
"""
from __future__ import annotations

import re
import secrets

__all__ = [
    "SEGMENT_META_FILE",
    "VECTORS_FILE",
    "SCANN_ASSETS_INDEX_FILE",
    "SCANN_DATASET_FILE",
    "SCANN_DOCIDS_FILE",
    "SCANN_ASSET_FILES",
    "SEGMENT_FILES",
    "SCRATCH_PREFIX",
    "segment_dir_name",
    "parse_segment_dir_name",
    "temp_segment_dir_name",
    "is_temp_segment_dir_name",
]

SEGMENT_META_FILE = "segment.json"
"""Sealed JSON: kind, metric, n, dim and the ScaNN search defaults of the segment."""

VECTORS_FILE = "vectors.bin"
"""Sealed float32 rows, C order; the row number is the segment-local id."""

SCANN_ASSETS_INDEX_FILE = "scann_assets.pbtxt"
"""ScaNN's asset list; written with relative paths so the folder can move."""

SCANN_DATASET_FILE = "dataset.npy"
"""ScaNN's float32 copy of the rows: not stored when it equals ``vectors.bin`` (the usual case);
rebuilt from the vectors when a searcher is loaded."""

SCANN_DOCIDS_FILE = "scann_docids.pkl"
"""Never written, never allowed: ScaNN's loader unpickles it (code execution)."""

# Every name ScaNN 1.4.2's serialize() can write except the docids pickle (scann_ops.cc and
# scann_assets.proto). A file outside this list makes a build fail rather than be sealed blindly.
SCANN_ASSET_FILES: frozenset[str] = frozenset({
    SCANN_ASSETS_INDEX_FILE,
    "scann_config.pb",
    "serialized_partitioner.pb",
    "ah_codebook.pb",
    "datapoint_to_token.npy",
    "hashed_dataset.npy",
    "hashed_dataset_soar.npy",
    SCANN_DATASET_FILE,
    "int8_dataset.npy",
    "int8_multipliers.npy",
    "dp_norms.npy",
    "bfloat16_dataset.npy",
})

SEGMENT_FILES: frozenset[str] = frozenset({SEGMENT_META_FILE, VECTORS_FILE}) | SCANN_ASSET_FILES
"""The only names a segment folder may hold."""

SCRATCH_PREFIX = "lsmvec-scann-"
"""Prefix of the private plaintext scratch folders used to talk to ScaNN (removed right away)."""

_SEGMENT_PREFIX = "seg-"
_TEMP_PREFIX = "tmp-seg-"
_SEGMENT_RE = re.compile(r"seg-(\d{6,20})")
_TEMP_RE = re.compile(r"tmp-seg-(\d{6,20})-[0-9a-f]{8,32}")


def segment_dir_name(segment_id: int) -> str:
    """``seg-000042``: the folder of a committed segment. Raises ValueError for a negative id."""
    if segment_id < 0:
        raise ValueError(f"segment id must be >= 0, got {segment_id}")
    return f"{_SEGMENT_PREFIX}{segment_id:06d}"


def parse_segment_dir_name(name: str) -> int | None:
    """Inverse of ``segment_dir_name``: the id, or None when ``name`` is not a segment folder."""
    match = _SEGMENT_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def temp_segment_dir_name(segment_id: int) -> str:
    """A fresh temporary build folder name for ``segment_id`` (random suffix: never reused)."""
    if segment_id < 0:
        raise ValueError(f"segment id must be >= 0, got {segment_id}")
    return f"{_TEMP_PREFIX}{segment_id:06d}-{secrets.token_hex(8)}"


def is_temp_segment_dir_name(name: str) -> bool:
    """True for a build folder left by a crash (safe to delete when no build is running)."""
    return _TEMP_RE.fullmatch(name) is not None
