"""Validation of an item's contents and metadata (split from items.py: one concept each).

Metadata must be JSON-like so filters and msgpack see the same values everywhere: str keys
(not empty, no '.', not starting with '$': dotted paths and operators are filter syntax),
finite numbers, bounded depth and size.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

from lsmvec.wal.errors import InvalidContentsError, InvalidMetadataError

MAX_METADATA_DEPTH = 32          # containers nested; the metadata dict itself is level 1
MAX_METADATA_BYTES = 1 << 20     # msgpack-encoded size of one item's metadata
_INT_RANGE = (-(1 << 63), (1 << 64) - 1)   # what msgpack can encode


def check_contents(value: Any, where: str) -> bytes | None:
    """Contents as bytes (str -> UTF-8). Raises InvalidContentsError on another type, or on a
    str that is not valid Unicode."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if not isinstance(value, str):
        raise InvalidContentsError(f"{where}: must be bytes or str, got {type(value).__name__}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidContentsError(f"{where}: not valid Unicode (lone surrogate at "
                                   f"{exc.start})") from None


def check_metadata(value: Any, where: str) -> dict | None:
    """A validated deep copy of one item's metadata. Raises InvalidMetadataError naming the path
    of the fault (``metadata.owner.tags[2]``)."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidMetadataError(f"{where}: must be a dict, got {type(value).__name__}")
    clean = _clean_json(value, where, 1, [MAX_METADATA_BYTES])
    size = len(msgpack.packb(clean, use_bin_type=True))
    if size > MAX_METADATA_BYTES:
        raise InvalidMetadataError(f"{where}: encodes to {size} bytes, over the "
                                   f"{MAX_METADATA_BYTES} limit")
    return clean


def _clean_json(value: Any, path: str, depth: int, budget: list[int]) -> Any:
    """A JSON-like copy of ``value``; ``path`` names it in errors. ``budget`` is a lower bound
    on the bytes still allowed, so an oversized value is refused before all of it is walked."""
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidMetadataError(f"{path}: metadata is over the {MAX_METADATA_BYTES} bytes limit")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        if not _INT_RANGE[0] <= int(value) <= _INT_RANGE[1]:
            raise InvalidMetadataError(f"{path}: int {int(value)} is outside the 64-bit range")
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise InvalidMetadataError(f"{path}: {float(value)} is not JSON (NaN/inf refused)")
        return float(value)
    if isinstance(value, str):
        try:
            budget[0] -= len(value.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidMetadataError(f"{path}: str is not valid Unicode (lone surrogate at "
                                       f"{exc.start})") from None
        return str(value)
    if not isinstance(value, (Mapping, list, tuple)):
        raise InvalidMetadataError(f"{path}: {type(value).__name__} is not JSON-like (str, int, "
                                   f"float, bool, None, list, dict)")
    if depth > MAX_METADATA_DEPTH:
        raise InvalidMetadataError(f"{path}: nested deeper than {MAX_METADATA_DEPTH} levels")
    if not isinstance(value, Mapping):
        return [_clean_json(x, f"{path}[{j}]", depth + 1, budget) for j, x in enumerate(value)]
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key or "." in key or key.startswith("$"):
            raise InvalidMetadataError(
                f"{path}: key {key!r} is refused: keys must be non-empty str without '.' and not "
                f"starting with '$' (filters use dotted paths and $operators)")
        out[key] = _clean_json(item, f"{path}.{key}", depth + 1, budget)
    return out
