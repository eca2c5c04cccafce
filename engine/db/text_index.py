"""The full-text index of one segment (TextIndex) and of the memtable (MemTextIndex): per
`full_text` field, term -> (rows, term frequencies), and every row's field length.

Raw counts, not BM25 scores: idf and avgdl depend on the whole live corpus (every segment, the
memtable, minus deleted and superseded rows), which changes with every write, so db/bm25.py
computes scores at query time from these counts. A length of 0 means the row has no term in
the field (absent, not a string, or only stop words): such a row is not in the field's
document count, as in Lucene.

Layout per field (immutable, packed like db/term_index.py's Postings): the sorted terms'
UTF-8 in one buffer with end offsets, every posting's row (int32, ascending within a term) and
frequency (uint32) in two arrays with per-term end offsets, and the lengths (uint32, one per
row). Cost: 8 bytes a posting, the term's bytes + 16 a term, 4 bytes a row per field;
measured (tools/bench_text.py, 100k comment lines of ~9 words): 631k postings, 32k terms,
6.2 MB resident and packed, ~10 bytes a posting all in.
``pack`` gives a msgpack-able dict of bytes and ints (no pickle) for the caller to seal;
``unpack`` checks everything it reads and raises ValueError on a damaged or foreign blob.
"""
from __future__ import annotations

from array import array
from collections import Counter
from typing import Iterable, Mapping

import msgpack
import numpy as np

from lsmvec.db.term_index import lower_bound
from lsmvec.request.analyzer import ANALYZER_VERSION, analyze

PACK_FORMAT = 1




class FieldPostings:
    """One field of a TextIndex: see the module docstring."""

    __slots__ = ("terms", "term_ends", "rows", "tfs", "post_ends", "lengths", "impacts", "stats")

    def __init__(self, terms: bytes, term_ends: np.ndarray, rows: np.ndarray, tfs: np.ndarray,
                 post_ends: np.ndarray, lengths: np.ndarray) -> None:
        self.terms, self.term_ends = terms, term_ends
        self.rows, self.tfs, self.post_ends, self.lengths = rows, tfs, post_ends, lengths
        # term -> (avgdl, k1, b, rows, tf part of each posting's BM25 score, [(idf, idf x part)]):
        # db/bm25.py fills it; valid while the corpus statistics it was computed with hold
        self.impacts: dict[str, tuple] = {}
        # live-rows version -> (rows with the field, its total length) over those rows
        self.stats: dict[object, tuple[int, int]] = {}

    @classmethod
    def from_triples(cls, vocab: list[str], term_ids: np.ndarray, rows: np.ndarray,
                     tfs: np.ndarray, lengths: np.ndarray) -> "FieldPostings":
        """From parallel (term id into sorted `vocab`, row, tf) arrays in any order; terms
        left without a posting are dropped."""
        order = np.lexsort((rows, term_ids))
        term_ids, rows, tfs = term_ids[order], rows[order], tfs[order]
        counts = np.bincount(term_ids, minlength=len(vocab)) if len(vocab) else np.zeros(0, int)
        keep = np.flatnonzero(counts)
        encoded = [vocab[i].encode("utf-8") for i in keep]
        term_ends = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(t) for t in encoded], out=term_ends[1:])
        post_ends = np.zeros(len(keep) + 1, np.int64)
        np.cumsum(counts[keep], out=post_ends[1:])
        return cls(b"".join(encoded), term_ends, rows.astype(np.int32), tfs.astype(np.uint32),
                   post_ends, lengths.astype(np.uint32))

    def __len__(self) -> int:
        return len(self.term_ends) - 1

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(rows, tfs) of `term` (shared views: callers must not modify), or None."""
        wanted = term.encode("utf-8")
        i = lower_bound(self.terms, self.term_ends, wanted)
        if i < len(self) and self.terms[self.term_ends[i]:self.term_ends[i + 1]] == wanted:
            start, end = self.post_ends[i], self.post_ends[i + 1]
            return self.rows[start:end], self.tfs[start:end]
        return None

    def vocab(self) -> list[str]:
        blob, ends = self.terms, self.term_ends
        return [blob[ends[i]:ends[i + 1]].decode("utf-8") for i in range(len(self))]

    def term_ids(self) -> np.ndarray:
        """The term number of every posting (parallel to rows and tfs)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.post_ends))

    @property
    def nbytes(self) -> int:
        return (len(self.terms) + self.term_ends.nbytes + self.rows.nbytes + self.tfs.nbytes
                + self.post_ends.nbytes + self.lengths.nbytes)


def _field_from_counts(per_row: list[tuple[int, Counter]], n: int) -> FieldPostings:
    vocab = sorted({term for _, counts in per_row for term in counts})
    ids = {term: i for i, term in enumerate(vocab)}
    term_ids, rows, tfs = array("q"), array("i"), array("I")
    lengths = np.zeros(n, np.uint32)
    for row, counts in per_row:
        lengths[row] = sum(counts.values())
        term_ids.extend(ids[t] for t in counts)
        rows.extend([row] * len(counts))
        tfs.extend(counts.values())
    return FieldPostings.from_triples(vocab, np.frombuffer(term_ids, np.int64),
                                      np.frombuffer(rows, np.int32),
                                      np.frombuffer(tfs, np.uint32), lengths)


class TextIndex:
    """The full-text postings of a segment's rows 0 .. n - 1, by field."""

    __slots__ = ("n", "fields", "analyzer_version")

    def __init__(self, n: int, fields: dict[str, FieldPostings],
                 analyzer_version: int = ANALYZER_VERSION) -> None:
        self.n = n
        self.fields = fields
        self.analyzer_version = analyzer_version

    @classmethod
    def build(cls, texts: Iterable[Mapping[str, str] | None], n: int,
              fields: Iterable[str]) -> "TextIndex":
        """The index of rows 0 .. n - 1 whose full_text values are `texts` (one dict field ->
        str per row, None for none). Only `fields` are indexed; a non-str value is no text."""
        wanted = tuple(fields)
        per_field: dict[str, list[tuple[int, Counter]]] = {f: [] for f in wanted}
        for row, values in enumerate(texts):
            if not values:
                continue
            for field in wanted:
                value = values.get(field)
                if isinstance(value, str):
                    counts = Counter(analyze(value))
                    if counts:
                        per_field[field].append((row, counts))
        return cls(n, {f: _field_from_counts(rows, n) for f, rows in per_field.items()})

    def field(self, name: str) -> FieldPostings | None:
        return self.fields.get(name)

    def remap(self, mapping: np.ndarray, n: int) -> "TextIndex":
        """This index as rows of a merged segment (mapping[old] = new, -1 dropped)."""
        mapping = np.asarray(mapping, np.int64)
        out = {}
        for name, fp in self.fields.items():
            moved = mapping[fp.rows]
            keep = moved >= 0
            lengths = np.zeros(n, np.uint32)
            kept_rows = mapping >= 0
            lengths[mapping[kept_rows]] = fp.lengths[kept_rows]
            out[name] = FieldPostings.from_triples(fp.vocab(), fp.term_ids()[keep], moved[keep],
                                                   fp.tfs[keep], lengths)
        return TextIndex(n, out, self.analyzer_version)

    @classmethod
    def merge(cls, parts: list["TextIndex"], n: int) -> "TextIndex":
        """One index of `parts` already remapped into rows 0 .. n - 1 (their rows disjoint)."""
        versions = {part.analyzer_version for part in parts}
        if len(versions) > 1:
            raise ValueError(f"cannot merge text indexes of analyzer versions {sorted(versions)}")
        names = sorted({name for part in parts for name in part.fields})
        out = {}
        for name in names:
            fps = [p.fields[name] for p in parts if name in p.fields]
            vocab = sorted({t for fp in fps for t in fp.vocab()})
            ids = {t: i for i, t in enumerate(vocab)}
            lengths = np.zeros(n, np.uint32)
            term_ids, rows, tfs = [], [], []
            for fp in fps:
                local = np.fromiter((ids[t] for t in fp.vocab()), np.int64, len(fp))
                term_ids.append(local[fp.term_ids()])
                rows.append(fp.rows)
                tfs.append(fp.tfs)
                if len(fp.lengths) != n:
                    raise ValueError("merge parts must be remapped to the merged rows first")
                lengths += fp.lengths  # disjoint rows: each row's length comes from one part
            out[name] = FieldPostings.from_triples(
                vocab, np.concatenate(term_ids) if term_ids else np.zeros(0, np.int64),
                np.concatenate(rows) if rows else np.zeros(0, np.int32),
                np.concatenate(tfs) if tfs else np.zeros(0, np.uint32), lengths)
        return cls(n, out, versions.pop() if versions else ANALYZER_VERSION)

    def pack(self) -> dict:
        return {"format": PACK_FORMAT, "analyzer": self.analyzer_version, "n": self.n,
                "fields": [[name, fp.terms, fp.term_ends.astype("<i8").tobytes(),
                            fp.rows.astype("<i4").tobytes(), fp.tfs.astype("<u4").tobytes(),
                            fp.post_ends.astype("<i8").tobytes(),
                            fp.lengths.astype("<u4").tobytes()]
                           for name, fp in self.fields.items()]}

    @classmethod
    def unpack(cls, raw: object, n: int) -> "TextIndex":
        """The index `pack` gave, for a segment of n rows. ValueError on anything inconsistent
        (the caller turns it into CorruptionError)."""
        if not isinstance(raw, dict) or raw.get("format") != PACK_FORMAT:
            raise ValueError("not a text index (unknown format)")
        if raw.get("n") != n or not isinstance(raw.get("analyzer"), int):
            raise ValueError("text index does not match its segment")
        fields = {}
        entries = raw.get("fields")
        if not isinstance(entries, list):
            raise ValueError("text index fields missing")
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 7 and isinstance(entry[0], str)
                    and all(isinstance(x, bytes) for x in entry[1:])):
                raise ValueError("text index field entry malformed")
            fields[entry[0]] = _checked_field(entry[1:], n)
        return cls(n, fields, raw["analyzer"])

    def to_bytes(self) -> bytes:
        """The segment folder's text.idx plaintext: ``pack`` as msgpack (sealed by the build)."""
        return msgpack.packb(self.pack(), use_bin_type=True)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray, n: int) -> "TextIndex":
        """Inverse of ``to_bytes``. ValueError on anything malformed."""
        try:
            raw = msgpack.unpackb(bytes(data), raw=False)
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            raise ValueError(f"text index is not msgpack ({exc})") from None
        return cls.unpack(raw, n)

    @property
    def nbytes(self) -> int:
        return sum(fp.nbytes for fp in self.fields.values())


def _buffer(data: bytes, dtype: str) -> np.ndarray:
    if len(data) % np.dtype(dtype).itemsize:
        raise ValueError("text index array truncated")
    return np.frombuffer(data, dtype)


def _checked_field(entry: list, n: int) -> FieldPostings:
    terms, te, ro, tf, pe, le = entry
    term_ends, rows, tfs = _buffer(te, "<i8"), _buffer(ro, "<i4"), _buffer(tf, "<u4")
    post_ends, lengths = _buffer(pe, "<i8"), _buffer(le, "<u4")
    count = len(term_ends) - 1
    if (count < 0 or len(post_ends) != count + 1 or term_ends[0] != 0 or post_ends[0] != 0
            or term_ends[-1] != len(terms) or post_ends[-1] != len(rows) or len(tfs) != len(rows)
            or len(lengths) != n or np.any(np.diff(term_ends) <= 0)
            or np.any(np.diff(post_ends) <= 0)):
        raise ValueError("text index offsets inconsistent")
    if rows.size and (rows.min() < 0 or rows.max() >= n or tfs.min() < 1):
        raise ValueError("text index postings out of range")
    try:
        vocab = [terms[term_ends[i]:term_ends[i + 1]].decode("utf-8") for i in range(count)]
    except UnicodeDecodeError as exc:
        raise ValueError("text index term not UTF-8") from exc
    if any(a >= b for a, b in zip(vocab, vocab[1:])):
        raise ValueError("text index terms not sorted")
    fp = FieldPostings(terms, term_ends, rows, tfs, post_ends, lengths)
    ids = fp.term_ids()
    # Within a term rows ascend strictly; a row's tfs sum to its length.
    if rows.size > 1 and np.any((np.diff(rows) <= 0) & (ids[1:] == ids[:-1])):
        raise ValueError("text index rows not sorted")
    if not np.array_equal(np.bincount(rows, tfs.astype(np.int64), minlength=n), lengths):
        raise ValueError("text index lengths do not match its postings")
    return fp


class MemField:
    """One field of the memtable's index: term -> growing (rows, tfs), lengths per row. Same
    reading interface as FieldPostings (``postings``, ``lengths``); arrays are copies, so a
    reader holds a consistent snapshot while the writer appends."""

    __slots__ = ("_postings", "_lengths")

    def __init__(self) -> None:
        self._postings: dict[str, tuple[array, array]] = {}
        self._lengths = array("I")

    def add(self, row: int, counts: Counter) -> None:
        if len(self._lengths) <= row:
            self._lengths.extend([0] * (row + 1 - len(self._lengths)))
        self._lengths[row] = sum(counts.values())
        for term, tf in counts.items():
            entry = self._postings.get(term)
            if entry is None:
                entry = self._postings[term] = (array("i"), array("I"))
            entry[0].append(row)
            entry[1].append(tf)

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        entry = self._postings.get(term)
        if entry is None:
            return None
        return np.array(entry[0], np.int32), np.array(entry[1], np.uint32)

    def lengths_of(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.uint32)
        got = np.array(self._lengths[:n], np.uint32)
        out[:len(got)] = got
        return out

    def triples(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        vocab = sorted(self._postings)
        ids = [np.full(len(self._postings[t][0]), i, np.int64) for i, t in enumerate(vocab)]
        rows = [np.array(self._postings[t][0], np.int32) for t in vocab]
        tfs = [np.array(self._postings[t][1], np.uint32) for t in vocab]
        cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt))
        return vocab, cat(ids, np.int64), cat(rows, np.int32), cat(tfs, np.uint32)


class MemView:
    """A MemField read as of n rows: what db/bm25.py scores (``postings``, ``lengths``)."""

    __slots__ = ("_field", "lengths", "_n")

    def __init__(self, field: MemField, n: int) -> None:
        self._field, self._n = field, n
        self.lengths = field.lengths_of(n)

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        got = self._field.postings(term)
        if got is None:
            return None
        keep = got[0] < self._n  # rows appended after this view was taken
        return got[0][keep], got[1][keep]


class MemTextIndex:
    """The memtable's full-text index: rows are appended (numbered 0, 1, ... in order) and
    deleted (a superseded or deleted row stops counting and scoring). Reads: ``n``,
    ``field(name)`` and ``live()``, as a TextIndex with its dead-row mask; ``freeze`` gives
    the TextIndex a flush writes (rows renumbered by the flush with TextIndex.remap).
    Appending costs the row's analysis + one dict update per distinct term; no rebuild."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.wanted = tuple(fields)
        self.n = 0
        self._fields = {f: MemField() for f in self.wanted}
        self._dead = array("b")

    def append(self, values: Mapping[str, str] | None) -> int:
        """Adds the next row (its full_text values); returns its row number."""
        row = self.n
        for field in self.wanted:
            value = values.get(field) if values else None
            if isinstance(value, str):
                counts = Counter(analyze(value))
                if counts:
                    self._fields[field].add(row, counts)
        self._dead.append(0)
        self.n += 1
        return row

    def delete(self, rows: Iterable[int]) -> None:
        for row in rows:
            if not 0 <= row < self.n:
                raise IndexError(f"row {row} not in the memtable text index")
            self._dead[row] = 1

    def field(self, name: str, n: int | None = None) -> MemView | None:
        """Field `name` as of the first `n` rows (None: every row so far)."""
        got = self._fields.get(name)
        return MemView(got, self.n if n is None else min(n, self.n)) if got is not None else None

    def live(self) -> np.ndarray:
        # A copy, not np.frombuffer: a live buffer export would make the writer's append raise.
        return np.array(self._dead[:self.n], np.int8) == 0

    def freeze(self) -> TextIndex:
        """Every row so far (dead ones too: the flush's mapping drops them) as a TextIndex."""
        out = {}
        for name, mf in self._fields.items():
            vocab, ids, rows, tfs = mf.triples()
            out[name] = FieldPostings.from_triples(vocab, ids, rows, tfs, mf.lengths_of(self.n))
        return TextIndex(self.n, out)
