"""metadata_schema: how each metadata field is indexed, fixed at create_index (issue 18).

``create_index(..., metadata_schema={field: {"filterable": bool, "pattern": bool,
"full_text": bool}})`` as the reference product (cyborgdb-core 0.18, observed):

- every option defaults to filterable True, pattern False, full_text False; fields not listed
  are filterable;
- ``filterable: False``: the field is never put in a segment's term index (its values exist only
  sealed inside their items). ``query()`` still filters on it (each candidate's metadata is
  checked); ``query_metadata()`` refuses it, since it answers from the index alone;
- ``pattern: True``: the field's string values also get an n-gram index (db/ngrams.py), and
  ``query_metadata()`` accepts ``$contains`` / ``$regex`` on it (and only on such fields);
- ``full_text: True``: the field is analysed for BM25 text search (issue 19);
- refused, before any file is written, each naming the field: ``full_text`` with ``pattern``,
  ``pattern`` without ``filterable``, an unknown option key, a non-bool value, a field name that
  is not a non-empty str of dot-separated non-empty parts none starting with '$'.

A field is a filter path: ``"owner.name"`` is the nested field; what a field says holds for
every path under it too (``{"secret": {"filterable": False}}`` hides ``secret.pin``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lsmvec.errors import InvalidArgumentError, InvalidTypeError

__all__ = ["MetadataSchema", "FIELD_OPTIONS"]

FIELD_OPTIONS = {"filterable": True, "pattern": False, "full_text": False}
"""A field's options and their defaults."""

MAX_FIELDS = 1024


class MetadataSchema:
    """An immutable, validated metadata_schema. ``MetadataSchema.check(value)`` builds one."""

    __slots__ = ("_fields", "unindexed", "patterns", "full_text")

    def __init__(self, fields: Mapping[str, Mapping[str, bool]] | None = None) -> None:
        self._fields = {name: dict(opts) for name, opts in sorted((fields or {}).items())}
        self.unindexed = tuple(name for name, o in self._fields.items() if not o["filterable"])
        """Fields whose paths no term index holds."""
        self.patterns = tuple(name for name, o in self._fields.items() if o["pattern"])
        """Fields that get an n-gram index."""
        self.full_text = tuple(name for name, o in self._fields.items() if o["full_text"])
        """Fields analysed for BM25 text search (db/text_index.py)."""

    @classmethod
    def check(cls, value: Any, name: str = "metadata_schema") -> MetadataSchema:
        """The schema `value` describes (None or {}: no fields listed). Raises InvalidTypeError
        / InvalidArgumentError naming the field and option at fault."""
        if value is None or isinstance(value, MetadataSchema):
            return value or cls()
        if not isinstance(value, Mapping):
            raise InvalidTypeError(f"{name} must be a dict of field -> options dict, got "
                                   f"{type(value).__name__}")
        if len(value) > MAX_FIELDS:
            raise InvalidArgumentError(f"{name} lists {len(value)} fields; at most {MAX_FIELDS}")
        fields: dict[str, dict[str, bool]] = {}
        for field, options in value.items():
            at = f"{name}[{field!r}]"
            if not isinstance(field, str):
                raise InvalidTypeError(f"{name}: field name {field!r} is not a str")
            parts = field.split(".")
            if not field or any(not p or p.startswith("$") for p in parts):
                raise InvalidArgumentError(f"{at}: a field is a non-empty path of non-empty "
                                           f"parts, none starting with '$'")
            if not isinstance(options, Mapping):
                raise InvalidTypeError(f"{at} must be a dict with optional keys "
                                       f"{', '.join(map(repr, FIELD_OPTIONS))}, got "
                                       f"{type(options).__name__}")
            opts = dict(FIELD_OPTIONS)
            for key, flag in options.items():
                if key not in FIELD_OPTIONS:
                    raise InvalidArgumentError(f"{at} has unknown key {key!r} (allowed: "
                                               f"{', '.join(map(repr, FIELD_OPTIONS))})")
                if not isinstance(flag, bool):
                    raise InvalidTypeError(f"{at}[{key!r}] must be a bool, got "
                                           f"{type(flag).__name__} {flag!r}")
                opts[key] = flag
            if opts["full_text"] and opts["pattern"]:
                raise InvalidArgumentError(f"{at}: full_text=True is incompatible with "
                                           f"pattern=True (a full-text field is analysed into "
                                           f"words, a pattern field indexed as whole strings)")
            if opts["pattern"] and not opts["filterable"]:
                raise InvalidArgumentError(f"{at}: pattern=True requires filterable=True (the "
                                           f"n-gram index is built from the field's term index)")
            fields[field] = opts
        return cls(fields)

    # -- what it says about a path -----------------------------------------------------------

    def _field_of(self, path: str, names: tuple[str, ...]) -> str | None:
        for name in names:
            if path == name or path.startswith(name + "."):
                return name
        return None

    def filterable(self, path: str) -> bool:
        """Whether a segment's term index holds `path`'s values."""
        return not self.unindexed or self._field_of(path, self.unindexed) is None

    def pattern(self, path: str) -> bool:
        """Whether `path` is (under) a pattern field: $contains / $regex in query_metadata."""
        return bool(self.patterns) and self._field_of(path, self.patterns) is not None

    def options(self, field: str) -> dict[str, bool]:
        return dict(self._fields.get(field, FIELD_OPTIONS))

    # -- stored and reported forms -----------------------------------------------------------

    def to_stored(self) -> dict[str, dict[str, bool]]:
        """CONFIG's (and index_config()'s) form: every listed field with all three options."""
        return {name: dict(opts) for name, opts in self._fields.items()}

    def __bool__(self) -> bool:
        return bool(self._fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataSchema) and other._fields == self._fields

    def __hash__(self) -> int:
        return hash(tuple((k, tuple(v.items())) for k, v in self._fields.items()))

    def __repr__(self) -> str:
        return f"MetadataSchema({self._fields!r})"
