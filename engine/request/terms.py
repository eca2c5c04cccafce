"""Index terms: how a metadata value is encoded for the per-segment secondary index (TermIndex)
and for a filter's plan, so that both sides agree byte for byte (one module, no cycle).
"""
from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

from lsmvec.errors import InvalidMetadataError, InvalidTypeError

__all__ = ["Term", "MAX_FILTER_DEPTH", "MAX_EXACT_INT", "scalar_key", "term_for", "index_terms"]

MAX_FILTER_DEPTH = 64
"""Nesting limit for filters, their operand values and metadata; deeper input is refused."""
MAX_EXACT_INT = 2 ** 53
"""Ints beyond this lose precision as floats: the planner and the index treat them apart."""

Term = tuple[str, bytes]
_NONE_KEY = ("z", None)


def scalar_key(value: Any) -> tuple[str, Any] | None:
    """A hashable key such that two scalars are equal under the filter rules iff their keys are
    equal; None for a non-scalar. NaN gets a fresh unequal key, so it never equals anything."""
    if value is None:
        return _NONE_KEY
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, (int, float)):
        return ("n", value) if value == value else ("x", object())
    if isinstance(value, str):
        return ("s", value)
    return None


def _encode_scalar(value: Any) -> bytes:
    """Deterministic tagged bytes; equal scalars (1 and 1.0, -0.0 and 0) encode identically,
    True and 1 do not. Raises InvalidTypeError for a non-scalar."""
    if value is None:
        return b"z"
    if isinstance(value, bool):
        return b"t" if value else b"f"
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            value = int(value)
        elif value != value:
            return b"d" + struct.pack(">d", math.nan)
        else:
            return b"d" + struct.pack(">d", value)
    if isinstance(value, int):
        return b"i" + int(value).to_bytes(value.bit_length() // 8 + 1, "big", signed=True)
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    raise InvalidTypeError(f"only str, int, float, bool and None are indexable, got "
                           f"{type(value).__name__}")


def term_for(path: str, value: Any) -> Term:
    """The secondary-index term for ``path == value``, identical to what ``index_terms`` emits.
    Raises InvalidTypeError when value is not a scalar (str, int, float, bool, None)."""
    return (path, _encode_scalar(value))


def index_terms(metadata: Mapping[str, Any] | None) -> set[Term]:
    """Every (dotted path, encoded value) term of a metadata dict: one per scalar leaf and per
    scalar element of a list leaf. Keys that a filter path cannot address (empty, containing
    ``.``, starting with ``$``) are skipped. Raises InvalidMetadataError on a non-str key or a
    value that is not JSON-like."""
    terms: set[Term] = set()
    if metadata is not None:
        _collect_terms(metadata, "", terms, 0)
    return terms


def _collect_terms(node: Mapping[str, Any], prefix: str, terms: set[Term], depth: int) -> None:
    if depth > MAX_FILTER_DEPTH:
        raise InvalidMetadataError(f"metadata nested deeper than {MAX_FILTER_DEPTH} at {prefix!r}")
    for key, value in node.items():
        if not isinstance(key, str):
            raise InvalidMetadataError(f"metadata key {key!r} under {prefix!r} is not a str")
        if not key or "." in key or key.startswith("$"):
            continue
        path = prefix + key
        if isinstance(value, dict):
            _collect_terms(value, path + ".", terms, depth + 1)
        elif isinstance(value, list):
            for element in value:
                if scalar_key(element) is not None:
                    terms.add((path, _encode_scalar(element)))
                elif not isinstance(element, (list, dict)):
                    raise InvalidMetadataError(f"metadata field {path!r} holds a "
                                               f"{type(element).__name__} element")
        elif scalar_key(value) is not None:
            terms.add((path, _encode_scalar(value)))
        else:
            raise InvalidMetadataError(f"metadata field {path!r} has unsupported type "
                                       f"{type(value).__name__}")


