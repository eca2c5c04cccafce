"""Index: the synchronous face of one open index (argument handling only; IndexCore does the work).

Method names, arguments and result shapes follow the reference product (see docs/api.md), so a
user switches by changing an import.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

import numpy as np

from lsmvec.disk.crypto import check_key
from lsmvec.disk.config import read_config
from lsmvec.errors import (ClosedError, InvalidArgumentError, InvalidTypeError, MissingVectorError,
                           ReadOnlyError, WrongKeyError)
from lsmvec.request.filters import compile_filter
from lsmvec.request.images import is_image
from lsmvec.request.items import Batch, normalize_ids, normalize_upsert
from lsmvec.request.vectors import normalize_query, single_query
from lsmvec.disk.records import KIND_DELETE, KIND_UPSERT
from lsmvec.embedding import embed_batch, embed_queries
from lsmvec.db.matching import FilterDelete
from lsmvec.db.metadata_select import select_ids
from lsmvec.request.metadata_query import check_index_only, limit_of, order_of
from lsmvec.db.updating import UpdateRequest, check_live
from lsmvec.request.updates import normalize_update
from lsmvec.db.reads import check_include
from lsmvec.db.text_search import bm25_config, hybrid_query, text_query, text_request
from lsmvec.db.iteration import ItemBatch, check_batch_size, iterate, open_cursor
from lsmvec.db.reader import Reader

_DEFAULT_QUERY_INCLUDE = ("distance",)
_DEFAULT_GET_INCLUDE = ("vector", "contents", "metadata")


def _embeddable(value: Any) -> bool:
    return isinstance(value, str) or is_image(value)


class Index:
    """A handle on an open index. Thread-safe. Closing it releases the core when last."""

    def __init__(self, core, release: Callable, client=None, *, read_only: bool = False):
        """`core`: the writer's IndexCore, or a Reader (db/reader.py) whose current view each
        call uses. `read_only`: every write raises ReadOnlyError (always so over a Reader)."""
        self._handle = core
        self._reader = core if isinstance(core, Reader) else None
        self.read_only = read_only or self._reader is not None
        self._name = core.config.name
        self._release = release
        self._client = client
        self._closed = False

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def _core(self):
        """The core a call uses: the writer's, or the reader's current view (take it once per
        call: a refresh may swap it)."""
        reader = self._reader
        return self._handle if reader is None else reader.view

    def _live(self):
        if self._closed:
            raise ClosedError(f"index {self._name!r} is closed")
        return self._core

    def _writable(self):
        """The core, for a call that writes: ReadOnlyError on a read_only handle, before any
        argument is looked at."""
        core = self._live()
        if self.read_only:
            raise ReadOnlyError(f"index {self._name!r} is open read_only: it cannot be written")
        return core

    def refresh(self) -> None:
        """A read_only index: see now what the writer has committed and logged (else within
        max_staleness). The writer's own handles are always current: nothing to do."""
        self._live()
        if self._reader is not None:
            self._reader.refresh()

    def _check_call_key(self, index_key: object) -> None:
        """The reference's newest API passes index_key on every call: it must match."""
        if index_key is None:
            return
        try:
            read_config(self._core.folder, check_key(index_key))
        except WrongKeyError:
            raise WrongKeyError(f"index_key passed to this call does not match index "
                                f"{self._core.config.name!r}") from None

    # -- writes -------------------------------------------------------------------------------

    def upsert(self, items: Any = None, vectors: Any = None, *, ids: Any = None,
               index_key: bytes | None = None) -> None:
        """Insert or overwrite items; durable and visible when it returns.

        Forms: upsert([{"id", "vector", "contents", "metadata"}, ...]), upsert([(id, vector), ...]),
        upsert(ids=array, vectors=array) and positional upsert(ids_array, vectors_array).
        Raises (before anything is written) the InvalidArgumentError / InvalidTypeError family
        naming the item and field.
        """
        self._writable()
        self._live().upsert(self._upsert_batch(items, vectors, ids=ids, index_key=index_key))

    def delete(self, ids: Any = None, *, filters: dict | None = None,
               index_key: bytes | None = None) -> None:
        """Remove items; unknown ids are ignored. Durable when it returns.

        `filters`: delete every live item matching it (with `ids` too: those of `ids` that
        match) -- one log record, all or nothing across a crash. Which items match is decided
        at that record's place in the log: writes logged before it are judged, later ones
        survive (db/matching.py). An empty filter without ids is refused (it would delete
        everything); neither ids nor filters is an InvalidArgumentError; a bad filter a
        FilterError -- each before anything is written."""
        self._writable()
        self._live().delete(self._delete_ids(ids, filters=filters, index_key=index_key))

    def update(self, items: Any, *, index_key: bytes | None = None) -> None:
        """Change some fields of existing items, keeping the others; durable when it returns.

        `items`: dicts with "id" and any of "vector", "contents", "metadata" (a field left out,
        or None, keeps its stored value; "metadata" replaces the whole metadata dict, as upsert
        does -- pass {} to clear it). With an embedding model, new str contents without a
        vector are embedded again; a metadata-only update keeps the stored vector bit for bit
        and never calls the model. Items of one id apply in order (a later item's fields win).
        Every id must be live: else ItemNotFoundError (a KeyError and a ValueError) naming it,
        and nothing is updated. Raises, before anything is written, what upsert raises for a
        bad field. One log record: all or nothing, merged at its place in the log, so racing
        updates never lose each other's fields and an update never revives a deleted item
        (db/updating.py)."""
        self._writable()
        self._live().upsert(self._update_request(items, index_key=index_key))

    def _update_request(self, items: Any, *, index_key: bytes | None = None) -> UpdateRequest:
        """update's arguments -> a validated (and embedded) request; raises what update raises."""
        core = self._live()
        self._check_call_key(index_key)
        update = normalize_update(items, dimension=core.dimension, metric=core.config.metric,
                                  embeds=core.embedder is not None)
        if len(update):
            check_live(core, update.batch.ids)  # before the model runs: a clear, early error
            if len(update.batch.embed_rows):
                update = update.embedded(embed_batch(core.embedder, update.batch,
                                                     core.config.metric))
        return UpdateRequest(update)

    def _upsert_batch(self, items: Any = None, vectors: Any = None, *, ids: Any = None,
                      index_key: bytes | None = None) -> Batch:
        """upsert's arguments -> a validated (and embedded) Batch; raises what upsert raises."""
        core = self._live()
        self._check_call_key(index_key)
        if vectors is not None and ids is None and items is not None:
            items, ids = None, items  # positional NumPy overload: upsert(ids, vectors)
        batch = normalize_upsert(items, ids=ids, vectors=vectors, dimension=core.dimension,
                                 metric=core.config.metric, embeds=core.embedder is not None)
        if len(batch.embed_rows):
            batch = embed_batch(core.embedder, batch, core.config.metric)
        return batch

    def _delete_ids(self, ids: Any = None, *, filters: dict | None = None,
                    index_key: bytes | None = None) -> list[str] | FilterDelete:
        self._live()
        self._check_call_key(index_key)
        if filters is None:
            if ids is None:
                raise InvalidArgumentError("delete needs ids or filters (or both)")
            return normalize_ids(ids)
        flt = compile_filter(filters)
        if ids is None and flt.is_match_all:
            raise InvalidArgumentError(f"delete(filters={filters!r}) matches every item; pass a "
                                       f"filter that selects, or ids")
        return FilterDelete(flt, None if ids is None else normalize_ids(ids))

    def write_many(self, calls: Sequence[tuple[str, tuple, dict]]) -> list[BaseException | None]:
        """Run several independent upsert / delete / update calls, given as (method name, args,
        kwargs), as one group of log records (AsyncIndex batches concurrent callers this way).
        Each call is validated on its own and is all or nothing; returns each one's error, or
        None."""
        core = self._live()
        outcomes: list[BaseException | None] = [None] * len(calls)
        writes: list[tuple[int, Any]] = []
        slots: list[int] = []
        for i, (method, args, kwargs) in enumerate(calls):
            try:
                if method == "upsert":
                    writes.append((KIND_UPSERT, self._upsert_batch(*args, **kwargs)))
                elif method == "delete":
                    writes.append((KIND_DELETE, self._delete_ids(*args, **kwargs)))
                elif method == "update":
                    writes.append((KIND_UPSERT, self._update_request(*args, **kwargs)))
                else:
                    raise InvalidArgumentError(f"write_many runs upsert, delete and update, not "
                                               f"{method!r}")
            except Exception as exc:
                outcomes[i] = exc
                continue
            slots.append(i)
        try:
            results = core.write_many(writes)
        except Exception as exc:  # e.g. closed, or no room: every call that got this far fails
            results = [exc] * len(writes)
        for i, result in zip(slots, results):
            outcomes[i] = result
        return outcomes

    # -- reads --------------------------------------------------------------------------------

    def query(self, query_vectors: Any = None, query_contents: Any = None, top_k: int = 100,
              n_probes: int | None = None, filters: dict | None = None,
              include: Sequence[str] | None = _DEFAULT_QUERY_INCLUDE, greedy: bool = False,
              *, index_key: bytes | None = None, text: Any = None, text_fields: Any = None,
              text_field_weights: Any = None, require_all_terms: bool = False,
              alpha: float | None = None, rrf_k: float | None = None,
              window_mult: int | None = None) -> list:
        """Nearest neighbours, ascending distance. One query -> list[dict]; a batch (2-D array,
        list of vectors or list of strings) -> list[list[dict]]. With `text` (a str, or a list
        for a batch): BM25 over the full_text fields, rows {"id", "score"} best first; with a
        query vector too, both rankings fused (db/text_search.py, db/bm25.fuse)."""
        if self._closed:
            raise ClosedError(f"index {self._core.config.name!r} is closed")
        core = self._core
        if index_key is not None:
            self._check_call_key(index_key)
        plain = (filters is None and query_contents is None and text is None and alpha is None
                 and text_fields is None and text_field_weights is None and rrf_k is None
                 and window_mult is None and require_all_terms is False)
        if (plain and type(top_k) is int and top_k > 0 and include is _DEFAULT_QUERY_INCLUDE
                and (n_probes is None or type(n_probes) is int and n_probes > 0)):
            # one vector, nothing else asked: the hot path, its arguments checked in the
            # fewest steps (each step is paid on the cold caches a ScaNN search leaves)
            config = core.config
            vector = single_query(query_vectors, config.dimension, config.metric)
            if vector is not None:
                return core.query_one(vector, top_k, n_probes, include)
        if type(top_k) is not int and (isinstance(top_k, bool) or not isinstance(top_k, np.integer)):
            raise InvalidArgumentError(f"top_k must be a positive int, got {top_k!r}")
        if top_k < 1:
            raise InvalidArgumentError(f"top_k must be a positive int, got {top_k!r}")
        if n_probes is not None and (isinstance(n_probes, bool) or not isinstance(n_probes, (int, np.integer))
                                     or n_probes < 1):
            raise InvalidArgumentError(f"n_probes must be a positive int or None, got {n_probes!r}")
        # The default include needs no check; no filter is None, not a match-all Filter (each
        # saves a few us of a ~135 us single query)
        fields = include if include is _DEFAULT_QUERY_INCLUDE else check_include(include)
        if plain:  # one vector, no filter (an include or numpy ints given)
            config = core.config
            vector = single_query(query_vectors, config.dimension, config.metric)
            if vector is not None:
                return core.query_one(vector, int(top_k), n_probes, fields)
        flt = None if filters is None else compile_filter(filters)
        req = text_request(core.config.options, text, text_fields, text_field_weights,
                           require_all_terms, alpha, rrf_k, window_mult)
        if req is not None and query_vectors is None and query_contents is None:
            return text_query(core, req, flt, int(top_k), fields)
        if query_vectors is not None and query_contents is not None:
            raise InvalidArgumentError("pass query_vectors or query_contents, not both")
        if query_vectors is None and query_contents is None:
            raise MissingVectorError("query needs query_vectors or query_contents")
        if query_contents is not None:
            queries, single = embed_queries(core.embedder, query_contents, core.config)
        else:
            # str or PIL image (never read as an array of pixels): contents to embed
            if _embeddable(query_vectors) or (isinstance(query_vectors, list) and query_vectors
                                              and all(_embeddable(q) for q in query_vectors)):
                queries, single = embed_queries(core.embedder, query_vectors, core.config)
            else:
                queries, single = normalize_query(query_vectors, dimension=core.dimension,
                                                  metric=core.config.metric)
        if req is not None:
            return hybrid_query(core, req, queries, single, int(top_k), n_probes, flt, fields)
        results = core.query(queries, int(top_k), n_probes=n_probes, flt=flt, include=fields)
        return results[0] if single else results

    def get(self, ids: Any = None, include: Sequence[str] | None = _DEFAULT_GET_INCLUDE, *,
            filters: dict | None = None, index_key: bytes | None = None) -> list[dict]:
        """Items in the order of `ids`, each with "id"; unknown ids are omitted.

        `filters`: only the items matching it; without ids, every live item matching it (in
        no promised order; found from the term index where the filter has an exact plan).
        Neither ids nor filters: InvalidArgumentError."""
        core = self._live()
        self._check_call_key(index_key)
        fields = check_include(include, ("vector", "contents", "metadata"))
        if ids is None and filters is None:
            raise InvalidArgumentError("get needs ids or filters (or both)")
        flt = None if filters is None else compile_filter(filters)
        return core.get(None if ids is None else normalize_ids(ids), fields, flt)

    def iter_items(self, batch_size: int = 1000,
                   include: Sequence[str] | None = _DEFAULT_GET_INCLUDE, filters: dict | None = None,
                   *, cursor: str | None = None, index_key: bytes | None = None
                   ) -> Iterator[ItemBatch]:
        """Every live item (matching `filters`) once, as ItemBatch(items, cursor) in ascending
        id order, while writes go on (db/iteration.py): an item live throughout is yielded
        exactly once, a deleted one vanishes, an inserted one appears iff its id sorts after
        the batch being read. `cursor`: a batch's cursor, to resume after that batch (another
        index's or an altered one: InvalidCursorError). Arguments are checked here, before
        the first batch; a batch is never empty (with a filter it may hold fewer items)."""
        core = self._live()
        self._check_call_key(index_key)
        size = check_batch_size(batch_size)
        fields = check_include(include, ("vector", "contents", "metadata"))
        flt = None if filters is None else compile_filter(filters)
        after = None if cursor is None else open_cursor(core.cipher, cursor)
        return iterate(core, self._live, size, fields, flt, after)

    def query_metadata(self, filters: dict | None = None, top_k: int | None = None,
                       order_by: str | dict | None = None, ascending: bool = True, *,
                       index_key: bytes | None = None, text: Any = None,
                       text_fields: Any = None, text_field_weights: Any = None,
                       require_all_terms: bool = False) -> list[dict]:
        """Ids of the live items matching `filters` (None / {}: every item), as [{"id"}],
        answered from the segments' term indexes and the memtables, not by reading items.

        `top_k` None or 0: every match. `order_by`: a field name or {field: 1 | -1} (the
        dict's direction wins over `ascending`): numbers, then strings, then booleans; items
        whose value is missing, null, a list or a dict last; ties by id. Stricter than query(),
        as the reference: a field metadata_schema marks filterable False, and $contains /
        $regex on a field that is not a pattern field, are a FilterError."""
        core = self._live()
        self._check_call_key(index_key)
        schema = core.config.options.metadata_schema
        flt = compile_filter(filters)
        check_index_only(flt.spec, schema)
        order = order_of(order_by, ascending, schema)
        req = text_request(core.config.options, text, text_fields, text_field_weights,
                           require_all_terms)
        if req is not None:  # BM25 best first, [{"id", "score"}]
            if order is not None:
                raise InvalidArgumentError("order_by cannot be combined with text= (text "
                                           "results are ordered by score)")
            return text_query(core, req, None if flt.is_match_all else flt, limit_of(top_k), ())
        return select_ids(core, flt, order, limit_of(top_k))

    def list_ids(self, *, index_key: bytes | None = None) -> list[str]:
        self._check_call_key(index_key)
        return self._live().live_ids()

    def get_num_vectors(self, *, index_key: bytes | None = None) -> int:
        self._check_call_key(index_key)
        return self._live().count()

    # -- maintenance --------------------------------------------------------------------------

    def train(self, n_lists: int | None = None, batch_size: int | None = None,
              max_iters: int | None = None, tolerance: float | None = None,
              max_memory: int | None = None, *, index_key: bytes | None = None) -> None:
        """Flush and compact everything into trained segments now."""
        self._writable()
        self._check_call_key(index_key)
        for name, value in (("n_lists", n_lists), ("batch_size", batch_size), ("max_iters", max_iters),
                            ("max_memory", max_memory)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"{name} must be a positive int or None, got {value!r}")
        self._live().train(n_lists=n_lists)

    def is_trained(self) -> bool:
        return self._live().training_state() == "trained"

    def training_state(self) -> str:
        return self._live().training_state()

    def flush(self) -> None:
        self._writable().flush()

    def compact(self) -> None:
        self._writable().compact()

    def stats(self) -> dict[str, Any]:
        return self._live().stats()

    def verify(self) -> dict[str, Any]:
        core = self._live()
        return self._reader.verify() if self._reader is not None else core.verify()

    # -- description (as in the reference) ----------------------------------------------------

    def index_name(self) -> str:
        return self._core.config.name

    def index_type(self) -> str:
        return "scann"

    def index_config(self) -> dict[str, Any]:
        cfg = self._core.config
        return {"dimension": cfg.dimension, "metric": cfg.metric, "index_type": self.index_type(),
                "n_lists": self.n_lists, "embedding_model": cfg.embedding_model,
                "metadata_schema": cfg.options.metadata_schema.to_stored(),
                "bm25": bm25_config(cfg.options)}

    @property
    def dimension(self) -> int | None:
        return self._core.config.dimension

    @property
    def metric(self) -> str:
        return self._core.config.metric

    @property
    def n_lists(self) -> int | None:
        return self._core.n_lists()

    # -- lifecycle ----------------------------------------------------------------------------

    def delete_index(self, *, index_key: bytes | None = None) -> None:
        """Delete this index and all its files; the handle is closed.

        The open handle already holds the key; an index_key passed too must match it
        (WrongKeyError otherwise, and the index is kept). ClosedError on a closed handle."""
        core = self._writable()
        self._check_call_key(index_key)
        client = self._client
        if client is None:
            raise InvalidArgumentError("this index has no client to delete it through")
        client._delete(core.config.name, None)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._client is not None:
            self._client._forget(self)
        self._release(self._handle)

    def __enter__(self) -> "Index":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        ro = " read_only" if self.read_only else ""
        return f"<Index {self._name!r} {state}{ro}>"

    def __reduce__(self):
        raise InvalidTypeError("an open Index cannot be pickled")

    def backup(self, dest: Any) -> dict[str, Any]:
        """Copy this index, while writes go on, to the new index folder `dest` (absent or an
        empty folder; its name a valid index name): `Client(dest.parent).load_index(dest.name,
        key)` opens it, with this index's key, holding exactly the writes logged up to the
        returned "lsn" (every write acknowledged before the call). Segment files are hard
        links where the file system allows. Returns {"lsn", "segments", "linked", "copied",
        "bytes", "path"}. ReadOnlyError on a read_only handle (back up from the writer).
        See lsmvec.db.backup."""
        from lsmvec.db.backup import backup
        core = self._live()
        if self.read_only:  # a reader's view has no log writer to take a position from
            raise ReadOnlyError(f"index {self._name!r} is open read_only: back it up through "
                                "its writer")
        return backup(core, dest)
