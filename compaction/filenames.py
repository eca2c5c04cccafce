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
    "SIDECAR_FILES",
    "TEXT_INDEX_FILE",
    "ROW_IDS_FILE",
    "SCRATCH_PREFIX",
    "scratch_dir_prefix",
    "parse_scratch_dir_name",
    "is_legacy_scratch_dir_name",
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

TEXT_INDEX_FILE = "text.idx"
"""Sealed full-text index of the segment's rows (the engine's db/text_index.py packs it; opaque
bytes here). Present only in an index with full_text fields."""

ROW_IDS_FILE = "ids.bin"
"""Sealed ids of the segment's rows (the engine's db/row_ids.py packs them; opaque bytes here).
Segments written before it keep their ids in the store (meta b"rows/<segment>")."""

SIDECAR_FILES: frozenset[str] = frozenset({TEXT_INDEX_FILE, ROW_IDS_FILE})
"""Optional files the engine hands a build to seal beside the rows (``build_segment(sidecars=)``)
and reads back with ``segment_files.read_sidecar``; never given to ScaNN."""

SEGMENT_FILES: frozenset[str] = (frozenset({SEGMENT_META_FILE, VECTORS_FILE}) | SCANN_ASSET_FILES
                                 | SIDECAR_FILES)
"""The only names a segment folder may hold."""

SCRATCH_PREFIX = "lsmvec-scann-"
"""Prefix of the private scratch folders used to talk to ScaNN (removed right away). The full name
is ``lsmvec-scann-<pid>-<pid namespace inode>-<random>``: the creating process, so a folder left
by a killed process can be told from a live one's and swept (``scann_assets``)."""

_SEGMENT_PREFIX = "seg-"
_TEMP_PREFIX = "tmp-seg-"
_SEGMENT_RE = re.compile(r"seg-(\d{6,20})")
_TEMP_RE = re.compile(r"tmp-seg-(\d{6,20})-[0-9a-f]{8,32}")
_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"(\d{1,10})-(\d{1,20})-[a-z0-9_]{1,32}")
_LEGACY_SCRATCH_RE = re.compile(re.escape(SCRATCH_PREFIX) + r"[a-z0-9_]{8}")


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


def scratch_dir_prefix(pid: int, pid_namespace: int) -> str:
    """``lsmvec-scann-<pid>-<pidns>-``: the prefix (``tempfile.mkdtemp`` adds the random part)
    of a scratch folder made by process ``pid`` of the pid namespace with inode
    ``pid_namespace`` (0 when unknown)."""
    if pid < 1 or pid_namespace < 0:
        raise ValueError(f"bad scratch owner pid={pid} pid_namespace={pid_namespace}")
    return f"{SCRATCH_PREFIX}{pid}-{pid_namespace}-"


def parse_scratch_dir_name(name: str) -> tuple[int, int] | None:
    """Inverse of ``scratch_dir_prefix`` + random suffix: (pid, pid namespace inode), or None
    when ``name`` is not such a scratch folder."""
    match = _SCRATCH_RE.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def is_legacy_scratch_dir_name(name: str) -> bool:
    """True for ``lsmvec-scann-<8 random>``: a scratch folder of versions before the owner pid
    was in the name (it may hold plaintext files when its process was killed)."""
    return _LEGACY_SCRATCH_RE.fullmatch(name) is not None
