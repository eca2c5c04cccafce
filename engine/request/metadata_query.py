"""query_metadata's arguments: the stricter filter rules of an index-only query, order_by, top_k.

query_metadata answers from the segments' term indexes and the memtables alone, so, as the
reference product (reference-0.18.md section 5):
- a field metadata_schema marks ``filterable: False`` is refused anywhere in the filter (the
  index does not hold it; ``query()`` with a vector filters on it instead);
- ``$contains`` and ``$regex`` need a ``pattern`` field (which has the n-gram index).
Each refusal is a FilterError naming the field and the operator, raised before anything runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsmvec.errors import FilterError, InvalidArgumentError
from lsmvec.request.schema import MetadataSchema

__all__ = ["Order", "check_index_only", "order_of", "limit_of"]

_PATTERN_OPERATORS = ("$contains", "$regex")


def check_index_only(spec: Mapping[str, Any] | None, schema: MetadataSchema) -> None:
    """Raises FilterError when the (already compiled, so well-formed) filter uses a field the
    schema keeps out of the index, or $contains / $regex on a field that is not a pattern
    field."""
    if spec:
        _walk(spec, schema)


def _walk(spec: Mapping[str, Any], schema: MetadataSchema) -> None:
    for key, value in spec.items():
        if key in ("$and", "$or", "$nor"):
            for sub in value:
                _walk(sub, schema)
        elif key == "$not":
            _walk(value, schema)
        else:
            _field(key, value, schema)


def _field(path: str, condition: Any, schema: MetadataSchema) -> None:
    if not schema.filterable(path):
        raise FilterError(f"query_metadata cannot filter on field {path!r}: metadata_schema "
                          f"marks it filterable False, so no index holds it (query() with a "
                          f"vector filters on it)")
    if not (isinstance(condition, Mapping)
            and any(isinstance(k, str) and k.startswith("$") for k in condition)):
        return
    for op, operand in condition.items():
        if op in _PATTERN_OPERATORS and not schema.pattern(path):
            raise FilterError(f"{op} on {path!r} requires a pattern field in query_metadata "
                              f"(create_index(..., metadata_schema={{{path!r}: "
                              f"{{'pattern': True}}}})); query() allows it on any field")
        if op == "$not":
            _field(path, operand, schema)


@dataclass(frozen=True)
class Order:
    path: str
    ascending: bool


def order_of(order_by: Any, ascending: Any, schema: MetadataSchema) -> Order | None:
    """order_by: None, a field name, or {field: 1 | -1} (the dict's direction wins over
    `ascending`). Raises InvalidArgumentError / FilterError naming the fault."""
    if not isinstance(ascending, (bool, np.bool_)):
        raise InvalidArgumentError(f"ascending must be a bool, got {type(ascending).__name__}")
    if order_by is None:
        return None
    if isinstance(order_by, Mapping):
        if len(order_by) != 1:
            raise InvalidArgumentError(f"order_by dict must name exactly one field, got "
                                       f"{len(order_by)}: {list(order_by)!r}")
        (path, direction), = order_by.items()
        if isinstance(direction, bool) or direction not in (1, -1):
            raise InvalidArgumentError(f"order_by[{path!r}] must be 1 (ascending) or -1 "
                                       f"(descending), got {direction!r}")
        ascending = direction == 1
    else:
        path = order_by
    if not isinstance(path, str) or not path or any(
            not part or part.startswith("$") for part in path.split(".")):
        raise InvalidArgumentError(f"order_by must be a field name or a one-field dict such as "
                                   f"{{'field': 1}} / {{'field': -1}}, got {order_by!r}")
    if not schema.filterable(path):
        raise FilterError(f"query_metadata cannot order by field {path!r}: metadata_schema "
                          f"marks it filterable False, so no index holds its values")
    return Order(path, bool(ascending))


def limit_of(top_k: Any) -> int | None:
    """None or 0: every match; else a positive int."""
    if top_k is None:
        return None
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise InvalidArgumentError(f"top_k must be a non-negative int or None (0 and None: "
                                   f"every match), got {top_k!r}")
    return int(top_k) or None
