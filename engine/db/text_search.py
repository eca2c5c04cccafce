"""Full-text (BM25) and hybrid search wired into the index (issue 19).

- Options: ``create_index(text_fields=[...], bm25_k1=, bm25_b=)`` (request/options.py); the
  analyzer version is stored in CONFIG and an index of another version is refused at open
  (``check_analyzer``), so a changed analyzer never silently re-scores an existing index.
- Segments: a TextIndex of the full_text fields' values is built at flush from the rows'
  metadata, and remapped + merged at merge; written as the sealed ``text.idx`` file of the
  segment's folder (compaction's sidecar files), so it is encrypted, named by the manifest's
  switch and removed with the segment. (The first build kept it as the LMDB meta value
  ``text/<segment>``; such segments are still read.)
- Memtables: a MemTextIndex per memtable, fed lazily from the memtable's own rows (metadata
  list) up to its current row count the first time a text query reads it, under a lock; its
  dead rows are the memtable's dead flags.
- Queries: BM25 over every source at once (db/bm25.py: global live statistics), a filter
  narrowing the answer (``allowed``) but not the statistics; with a query vector too, the
  window(top_k, window_mult) best of each side fused by db/bm25.fuse.
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from lsmvec.db import bm25
from lsmvec.db.matching import matching_rows
from lsmvec.db.reads import hits_of, nearest
from lsmvec.db.segments import SegmentSource, segment_items
from lsmvec.db.text_index import MemTextIndex, TextIndex
from lsmvec.errors import InvalidArgumentError, InvalidTypeError
from lsmvec.request.analyzer import ANALYZER_VERSION, query_terms
from lsmvec.request.filters import get_path



# -- options ------------------------------------------------------------------------------------

def check_analyzer(options: Any, name: str) -> None:
    """Refuse an index whose full_text fields were analysed by another analyzer version."""
    if options.metadata_schema.full_text and options.analyzer_version != ANALYZER_VERSION:
        raise InvalidArgumentError(
            f"index {name!r} was built with full-text analyzer version "
            f"{options.analyzer_version}; this lsmvec has analyzer version {ANALYZER_VERSION} "
            f"(its terms would be cut differently, so scores would silently change)")


def bm25_config(options: Any) -> dict | None:
    """``index_config()["bm25"]``: None without full_text fields."""
    if not options.metadata_schema.full_text:
        return None
    return {"k1": options.bm25_k1, "b": options.bm25_b,
            "analyzer_version": options.analyzer_version}


# -- building -----------------------------------------------------------------------------------

def _value(meta: Any, path: str) -> Any:
    return get_path(meta, path)


def field_texts(meta: Any, fields: Sequence[str]) -> dict[str, str] | None:
    """The str values of the full_text `fields` (dotted paths) of one row's metadata."""
    if not meta or not isinstance(meta, dict):
        return None
    out = {f: v for f in fields if isinstance(v := _value(meta, f), str)}
    return out or None


def build_text(metadata: Sequence[Any], n: int, fields: Sequence[str]) -> TextIndex | None:
    """A new segment's text index (None without full_text fields)."""
    if not fields:
        return None
    return TextIndex.build((field_texts(m, fields) for m in metadata), n, fields)


def merge_text(picked: list[tuple[SegmentSource, np.ndarray]], n: int, fields: Sequence[str],
               store: Any) -> TextIndex | None:
    """The merged segment's text index from its parts' (rows `picked` of each, in order); a
    part without one (written before text indexes) is analysed from its rows' metadata."""
    if not fields:
        return None
    parts, offset = [], 0
    for src, rows in picked:
        mapping = np.full(src.n_rows, -1, np.int64)
        mapping[rows] = np.arange(offset, offset + len(rows))
        text = src.text
        if text is None:
            items = segment_items(store, src.cache, [(src, int(r)) for r in range(src.n_rows)])
            text = TextIndex.build((field_texts(item[2], fields) if mapping[r] >= 0 else None
                                    for r, item in enumerate(items)), src.n_rows, fields)
        parts.append(text.remap(mapping, n))
        offset += len(rows)
    return TextIndex.merge(parts, n)


_mem_lock = threading.Lock()
_mem_text: "weakref.WeakKeyDictionary[Any, MemTextIndex]" = weakref.WeakKeyDictionary()


def memtable_text(table: Any, fields: Sequence[str]) -> tuple[MemTextIndex, int]:
    """The memtable's MemTextIndex fed up to its current rows, and that row count (caller holds
    _mem_lock). Rows only ever append (an overwrite is a new row, the old one marked dead), so
    feeding the new tail keeps it exact."""
    index = _mem_text.get(table)
    if index is None:
        index = _mem_text[table] = MemTextIndex(fields)
    n = min(table.n_rows, len(table.metadata))
    for row in range(index.n, n):
        index.append(field_texts(table.metadata[row], fields))
    return index, n


# -- queries ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TextRequest:
    texts: list[str]
    single: bool
    fields: tuple[str, ...]
    weights: tuple[float, ...]
    require_all: bool
    alpha: float | None
    rrf_k: float | None
    window_mult: int | None


def _number(name: str, value: Any, low: float, high: float | None, *, open_low: bool = False
            ) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidTypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if (number != number or (number <= low if open_low else number < low)
            or (high is not None and number > high)):
        bounds = f"{'(' if open_low else '['}{low}, {'inf' if high is None else high}]"
        raise InvalidArgumentError(f"{name} must be in {bounds}, got {value!r}")
    return number


def check_text_request(options: Any, text: Any, text_fields: Any = None,
                       text_field_weights: Any = None, require_all_terms: Any = False,
                       alpha: Any = None, rrf_k: Any = None, window_mult: Any = None
                       ) -> TextRequest:
    """The validated text side of a query; raises from the errors tree before anything runs."""
    full_text = options.metadata_schema.full_text
    if not full_text:
        raise InvalidArgumentError("text= needs full_text fields: this index has none (create "
                                   "it with text_fields=[...] or metadata_schema full_text)")
    single = isinstance(text, str)
    texts = [text] if single else text
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidTypeError(f"text must be a str or a non-empty list of str, got "
                               f"{type(text).__name__}")
    if text_fields is None:
        fields = tuple(full_text)
    else:
        if isinstance(text_fields, str):
            text_fields = [text_fields]
        if not isinstance(text_fields, (list, tuple)) or not text_fields:
            raise InvalidTypeError("text_fields must be a non-empty list of field names")
        for field in text_fields:
            if field not in full_text:
                raise InvalidArgumentError(f"text_fields: {field!r} is not a full_text field "
                                           f"(full_text fields: {', '.join(full_text)})")
        fields = tuple(dict.fromkeys(text_fields))
    weights = [1.0] * len(fields)
    if text_field_weights is not None:
        if not isinstance(text_field_weights, dict):
            raise InvalidTypeError("text_field_weights must be a dict of field -> weight")
        for field, weight in text_field_weights.items():
            if field not in fields:
                raise InvalidArgumentError(f"text_field_weights: {field!r} is not a searched "
                                           f"field (searched: {', '.join(fields)})")
            weights[fields.index(field)] = _number(f"text_field_weights[{field!r}]", weight,
                                                   0.0, None)
    if not isinstance(require_all_terms, bool):
        raise InvalidTypeError(f"require_all_terms must be a bool, got {require_all_terms!r}")
    if alpha is not None:
        alpha = _number("alpha", alpha, 0.0, 1.0)
    if rrf_k is not None:
        rrf_k = _number("rrf_k", rrf_k, 0.0, None, open_low=True)
    if window_mult is not None and (isinstance(window_mult, bool) or not isinstance(
            window_mult, (int, np.integer)) or window_mult < 1):
        raise InvalidArgumentError(f"window_mult must be a positive int, got {window_mult!r}")
    return TextRequest(texts, single, fields, tuple(weights), require_all_terms, alpha, rrf_k,
                       None if window_mult is None else int(window_mult))


def _sources(core: Any, flt: Any) -> tuple[list[bm25.Source], list[Any]]:
    """(bm25 sources, the index sources they stand for) of one snapshot (read lock held)."""
    fields = core.config.options.metadata_schema.full_text
    tables = [core.memtable, *reversed(core.frozen)]
    allowed: dict[int, np.ndarray] = {}
    if flt is not None and not flt.is_match_all:
        for source, rows in matching_rows(tables, core.segments, flt, core.store,
                                          core.item_cache):
            mask = np.zeros(source.n_rows, bool)
            mask[rows] = True
            allowed[id(source)] = mask
    out, owners = [], []
    for table in tables:
        index, n = memtable_text(table, fields)
        if n == 0:
            continue
        mask = allowed.get(id(table), np.zeros(n, bool)) if flt is not None and not \
            flt.is_match_all else None
        dead = table.dead_flags()[:n]
        out.append(bm25.Source(_Prefix(index, n), ~dead if dead.any() else None,
                               None if mask is None else mask[:n]))
        owners.append(table)
    for seg in core.segments:
        if seg.text is None:
            continue
        mask = (allowed.get(id(seg), np.zeros(seg.n_rows, bool))
                if flt is not None and not flt.is_match_all else None)
        # live=None when nothing is dead: bm25 then skips a mask gather per term and per field
        out.append(bm25.Source(seg.text, ~seg.dead if seg.any_dead else None, mask,
                               live_key=seg.n_dead))  # dead rows only ever grow
        owners.append(seg)
    return out, owners


class _Prefix:
    """A MemTextIndex read as of its first n rows (rows appended later are not in the
    memtable's dead flags this snapshot read)."""

    def __init__(self, index: MemTextIndex, n: int) -> None:
        self.n, self._index = n, index

    def field(self, name: str):
        return self._index.field(name, self.n)


def _text_hits(core: Any, req: TextRequest, text: str, flt: Any, k: int | None
               ) -> list[tuple[Any, int, float]]:
    """(source, row, score) best first; read lock held by the caller."""
    terms = query_terms(text)
    if not terms:
        return []
    opts = core.config.options
    # One lock around feeding and reading the memtables' indexes: a MemField's arrays must not
    # grow while a reader copies them (an exported buffer makes array.append raise).
    with _mem_lock:
        sources, owners = _sources(core, flt)
        hits = bm25.search(sources, terms, req.fields, weights=req.weights, k1=opts.bm25_k1,
                           b=opts.bm25_b, require_all_terms=req.require_all, top_k=k)
    scores = hits.scores.astype(np.float32).astype(np.float64).tolist()  # float32, as results
    return [(owners[s], r, v) for s, r, v in zip(hits.sources.tolist(), hits.rows.tolist(),
                                                 scores)]


def _results(picked: list[tuple[Any, int, float]], include: tuple[str, ...], core: Any
             ) -> list[dict]:
    rest = tuple(f for f in include if f != "distance")
    rows = hits_of(picked, rest, core.store, core.item_cache)
    if not rest:
        return [{"id": row["id"], "score": score} for row, (_s, _r, score) in zip(rows, picked)]
    out = []
    for row, (_s, _r, score) in zip(rows, picked):
        hit = {"id": row.pop("id"), "score": score}
        hit.update(row)
        out.append(hit)
    return out


def text_query(core: Any, req: TextRequest, flt: Any, k: int | None,
               include: tuple[str, ...]) -> list:
    """Text-only queries: rows {"id", "score", ...} best first; one list per text."""
    out = []
    for text in req.texts:
        with core.read_lock():
            picked = _text_hits(core, req, text, flt, k)
            out.append(_results(picked, include, core))
    return out[0] if req.single else out


def hybrid_query(core: Any, req: TextRequest, queries: np.ndarray, single: bool, k: int,
                 n_probes: int | None, flt: Any, include: tuple[str, ...]) -> list:
    """Vector + text: each side's window(k, window_mult) best, fused (bm25.fuse). Both sides
    of a query read one snapshot (one read lock), so a live item has one location in both:
    the rankings are fused by (source, row), and only the k fused rows are made into results
    (at 60k rows, decoding both windows' ids and looking up the vector side's in the store
    cost ~0.2 ms of a ~0.8 ms query)."""
    texts = req.texts
    if len(texts) == 1 and len(queries) > 1:
        texts = texts * len(queries)
    if len(texts) != len(queries):
        raise InvalidArgumentError(f"{len(texts)} texts for {len(queries)} query vectors")
    width = bm25.window(k, req.window_mult)
    out = []
    for query, text in zip(queries, texts):
        with core.read_lock():
            sources = core.sources()
            vector_side = nearest(sources, query, width, n_probes, flt)
            text_side = _text_hits(core, req, text, flt, width)
            owner = {id(o): o for o in (*sources, core.memtable, *core.frozen)}
            fused = bm25.fuse([(id(o), r) for o, r, _d in vector_side],
                              [(id(o), r) for o, r, _v in text_side],
                              alpha=req.alpha, rrf_k=req.rrf_k, top_k=k)
            picked = [(owner[at[0]], at[1], score) for at, score in fused]
            out.append(_results(picked, include, core))
    return out[0] if single and req.single else out


def text_request(options: Any, text: Any, text_fields: Any, text_field_weights: Any,
                 require_all_terms: Any, alpha: Any = None, rrf_k: Any = None,
                 window_mult: Any = None) -> TextRequest | None:
    """None for a query without text; the text options without text= are refused."""
    if text is None:
        given = [name for name, value in (
            ("text_fields", text_fields), ("text_field_weights", text_field_weights),
            ("alpha", alpha), ("rrf_k", rrf_k), ("window_mult", window_mult)) if value is not None]
        if require_all_terms is not False:
            given.append("require_all_terms")
        if given:
            raise InvalidArgumentError(f"{', '.join(given)} given without text=")
        return None
    return check_text_request(options, text, text_fields, text_field_weights,
                              require_all_terms, alpha, rrf_k, window_mult)
