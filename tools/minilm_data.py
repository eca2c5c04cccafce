"""Real sentence embeddings for the benchmark: deterministic synthetic English sentences embedded
by the offline MiniLM model (all-MiniLM-L6-v2, 384-d), cached as float32 .npy files.

    python -m lsmvec.tools.minilm_data [--n 100000] [--queries 1000] [--seed 0] [--max-minutes 12]

Why synthetic text: no data set can be downloaded here, and a benchmark must be reproducible;
template sentences over varied word lists still give MiniLM's real geometry (topics, shared
words, near-paraphrases), which uniform noise does not. Corpus sentences and held-out queries
use different templates over the same vocabulary, so a query is a paraphrase-like neighbour of
many corpus rows, never a copy of one.

The cache lives under ~/.cache/lsmvec-bench/ (never in the repository), keyed by n, seed and
the generator's version: `minilm-v{VERSION}-n{n}-s{seed}-corpus.npy` / `...-q{nq}-queries.npy`.
Embedding runs at a few hundred sentences/s on 2 cores, so the first 2,000 sentences are timed
and an ETA printed; past `max_minutes` the corpus is cut to FALLBACK_N and the caller is told.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

__all__ = ["MODEL_NAME", "FALLBACK_N", "cache_dir", "corpus_sentences", "query_sentences",
           "MiniLMData", "load_or_embed", "main"]

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
VERSION = 1
"""Bumped whenever the sentence generator changes, so stale caches are never reused."""
FALLBACK_N = 60_000
"""Corpus size used instead when the requested one would take longer than `max_minutes`."""
PROBE_ROWS = 2_000
"""Sentences embedded first to time the model and print an ETA (they are kept, not wasted)."""
CHUNK_ROWS = 512
"""Sentences per encode call: one tqdm step; the model batches 64 inside."""

_ADJECTIVES = (
    "broken", "ancient", "quarterly", "wooden", "rare", "enormous", "fragile", "secret", "noisy",
    "elegant", "rusty", "modern", "handmade", "forgotten", "expensive", "tiny", "colourful",
    "digital", "frozen", "borrowed", "experimental", "famous", "crooked", "shiny", "dusty",
    "portable", "official", "strange", "reliable", "delicate", "heavy", "curious", "organic",
    "vintage", "unfinished", "luminous")
_SUBJECTS = (
    "the engineer", "a small dog", "my neighbour", "the committee", "a tired student",
    "the old captain", "our team", "the chef", "a curious child", "the orchestra", "the startup",
    "a local farmer", "the museum curator", "the pilot", "a novelist", "the mayor", "a nurse",
    "the librarian", "two astronomers", "the night guard", "a retired teacher", "the gardener",
    "the court", "a street musician", "the surgeon", "our landlord", "the research group",
    "a young architect", "the football coach", "the film crew", "a beekeeper", "the harbour master",
    "the city council", "a software developer", "the bakery owner", "a travelling salesman",
    "the geologist", "the school choir", "a park ranger", "the translator")
_VERBS = (  # (past tense, base form)
    ("repaired", "repair"), ("painted", "paint"), ("discussed", "discuss"), ("ignored", "ignore"),
    ("celebrated", "celebrate"), ("measured", "measure"), ("sold", "sell"),
    ("photographed", "photograph"), ("cooked", "cook"), ("designed", "design"),
    ("forgot", "forget"), ("delivered", "deliver"), ("studied", "study"),
    ("borrowed", "borrow"), ("inspected", "inspect"), ("lost", "lose"), ("found", "find"),
    ("built", "build"), ("tested", "test"), ("described", "describe"), ("cleaned", "clean"),
    ("stole", "steal"), ("returned", "return"), ("examined", "examine"), ("hid", "hide"),
    ("translated", "translate"), ("packed", "pack"), ("recorded", "record"),
    ("criticised", "criticise"), ("restored", "restore"), ("ordered", "order"),
    ("assembled", "assemble"), ("donated", "donate"), ("weighed", "weigh"))
_OBJECTS = (
    "bicycle", "budget", "mountain trail", "map", "vaccine", "boat", "solar panel",
    "chess opening", "wedding cake", "jazz record", "tax report", "volcano model", "garden fence",
    "coffee grinder", "train timetable", "orchid", "telescope", "violin", "spreadsheet",
    "bridge", "manuscript", "printer", "lighthouse", "sourdough starter", "satellite dish",
    "umbrella", "fossil", "contract", "kite", "microscope", "soup recipe", "tractor", "painting",
    "server rack", "passport", "wind turbine", "sculpture", "cookbook", "clock tower", "sailboat",
    "laptop", "greenhouse", "piano", "election poster", "drone", "tapestry", "fishing net",
    "marathon route")
_PLACES = (
    "in the harbour", "before dawn", "near the old station", "at the conference",
    "during the storm", "on a rainy Tuesday", "in the village square", "after lunch",
    "at the university lab", "by the river", "in a crowded market", "on the rooftop",
    "in the basement", "at midnight", "behind the cathedral", "on the night train",
    "at the airport", "in the desert", "during the festival", "in a tiny apartment",
    "on the island", "at the hospital", "in the snowy forest", "during the power cut",
    "at the football stadium", "in the public library", "on the mountain pass",
    "at the embassy", "in the factory", "during the summer holidays")
_REASONS = (
    "for the exhibition", "to save money", "because nobody else would", "for a documentary",
    "as a favour to a friend", "to win a bet", "for the annual report", "out of boredom",
    "for a charity auction", "to impress the inspectors", "for science", "before the deadline",
    "for the first time", "without asking anyone", "with great care", "in a hurry")

# Corpus templates: statements. Query templates (below) ask about the same events in other words.
_CORPUS_TEMPLATES = (
    "{S} {V} the {A} {O} {P}.",
    "{P}, {s} {V} the {A} {O} {R}.",
    "It was {s} who {V} the {A} {O} {R}.",
    "The {A} {O} was {V} by {s} {P}.",
    "{S} {V} the {O} {P}, and it looked {A}.",
    "Yesterday {s} {V} the {O} {R}; it was {A}.",
    "Reports say {s} {V} an unusually {A} {O} {P}.",
    "{S} quietly {V} the {A} {O} {R}, {P}.",
)
_QUERY_TEMPLATES = (
    "Who {V} the {A} {O} {P}?",
    "Did {s} really {v} the {A} {O} {R}?",
    "Looking for the story where {s} {V} some {A} {O}.",
    "Why would {s} {v} the {O} {P}?",
    "Which {A} {O} did {s} {v} {P}?",
    "News about {s} and the {A} {O} {P}",
)


def cache_dir() -> Path:
    """~/.cache/lsmvec-bench (XDG_CACHE_HOME honoured): outside any repository."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lsmvec-bench"


def _fill(template: str, rng: np.random.Generator) -> str:
    subject = _SUBJECTS[rng.integers(len(_SUBJECTS))]
    past, base = _VERBS[rng.integers(len(_VERBS))]
    text = template.format(
        S=subject[0].upper() + subject[1:], s=subject, V=past, v=base,
        A=_ADJECTIVES[rng.integers(len(_ADJECTIVES))], O=_OBJECTS[rng.integers(len(_OBJECTS))],
        P=_PLACES[rng.integers(len(_PLACES))], R=_REASONS[rng.integers(len(_REASONS))])
    return text[0].upper() + text[1:]


def _distinct(n: int, templates: tuple[str, ...], seed: int, stream: int) -> list[str]:
    """`n` distinct sentences in a fixed order for (seed, stream); a longer list extends a
    shorter one.

    Raises ValueError when the vocabulary cannot give that many (it offers ~10^10)."""
    rng = np.random.default_rng([seed, stream])
    seen: set[str] = set()
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 1000:
            raise ValueError(f"could not draw {n} distinct sentences")
        text = _fill(templates[rng.integers(len(templates))], rng)
        if text in seen:
            continue
        seen.add(text)
        out.append(text)
    return out


def corpus_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct statement sentences; the first m of corpus_sentences(n) are corpus_sentences(m)."""
    return _distinct(n, _CORPUS_TEMPLATES, seed, 0)


def query_sentences(n: int, seed: int = 0) -> list[str]:
    """`n` distinct question-like sentences (other templates, same vocabulary): held out."""
    return _distinct(n, _QUERY_TEMPLATES, seed, 1)


@dataclass(frozen=True)
class MiniLMData:
    """Embedded corpus (n, 384) and queries (nq, 384), float32, not normalised."""

    corpus: np.ndarray
    queries: np.ndarray
    requested_n: int
    embed_seconds: float  # 0.0 when both came from the cache
    from_cache: bool
    corpus_path: Path
    queries_path: Path

    @property
    def n(self) -> int:
        return int(self.corpus.shape[0])


def _paths(n: int, seed: int, n_queries: int, folder: Path) -> tuple[Path, Path]:
    """Corpus file keyed by (n, seed); queries by (seed, count) only: they do not depend on n."""
    stem = f"minilm-v{VERSION}"
    return (folder / f"{stem}-n{n}-s{seed}-corpus.npy",
            folder / f"{stem}-s{seed}-q{n_queries}-queries.npy")


def _save(path: Path, array: np.ndarray) -> None:
    """Atomic write (a killed run leaves no half file that a later run would trust)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(array, np.float32), allow_pickle=False)
    os.replace(tmp, path)


def _load(path: Path, rows: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    array = np.load(path, allow_pickle=False)
    if array.dtype != np.float32 or array.ndim != 2 or array.shape[0] != rows:
        log.warning("ignoring cache file %s with shape %s", path, array.shape)
        return None
    return array


def _embed(embed: Callable[[list[str]], np.ndarray], texts: list[str], desc: str, out: np.ndarray, start: int = 0) -> None:
    with tqdm(total=len(texts), initial=start, unit="sent", desc=desc, file=sys.stderr,
              dynamic_ncols=True, leave=True) as bar:
        for lo in range(start, len(texts), CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, len(texts))
            out[lo:hi] = embed(texts[lo:hi])
            bar.update(hi - lo)


def load_or_embed(n: int = 100_000, *, seed: int = 0, n_queries: int = 1000,
                  max_minutes: float | None = 12.0, folder: Path | None = None,
                  say: Callable[[str], None] | None = None) -> MiniLMData:
    """Corpus and query embeddings from the cache, else embed them now (and cache them).

    When nothing is cached for `n` and the measured rate says embedding n sentences would take
    longer than `max_minutes`, FALLBACK_N sentences are embedded (or taken from the cache)
    instead: the result's `n` says so, and `say` is told. `say` receives progress lines
    (default: logging). Raises EmbeddingModelUnavailable when the offline model is missing."""
    say = say or log.info
    folder = folder or cache_dir()
    corpus_path, queries_path = _paths(n, seed, n_queries, folder)
    corpus = _load(corpus_path, n)
    queries = _load(queries_path, n_queries)
    if corpus is not None and queries is not None:
        return MiniLMData(corpus, queries, n, 0.0, True, corpus_path, queries_path)

    from lsmvec.embedding import load_model
    started = time.perf_counter()
    model = load_model(MODEL_NAME)
    say(f"loaded {MODEL_NAME} (dim {model.dimension}) in {time.perf_counter() - started:.1f}s")
    embed = model.embed
    embed(["warm-up sentence"])
    spent = 0.0
    if corpus is None:
        t0 = time.perf_counter()
        corpus, corpus_path = _embed_corpus(embed, model.dimension, n, seed, max_minutes,
                                            folder, n_queries, say)
        spent += time.perf_counter() - t0
    if queries is None:
        t0 = time.perf_counter()
        queries = np.empty((n_queries, model.dimension), np.float32)
        _embed(embed, query_sentences(n_queries, seed), f"minilm queries {n_queries}", queries)
        _save(queries_path, queries)
        spent += time.perf_counter() - t0
    return MiniLMData(corpus, queries, n, spent, False, corpus_path, queries_path)


def _embed_corpus(embed: Callable[[list[str]], np.ndarray], dim: int, n: int, seed: int,
                  max_minutes: float | None, folder: Path, n_queries: int,
                  say: Callable[[str], None]) -> tuple[np.ndarray, Path]:
    """Time the first PROBE_ROWS sentences, print the ETA, then embed n (or FALLBACK_N)."""
    texts = corpus_sentences(n, seed)
    probe = min(PROBE_ROWS, n)
    out = np.empty((n, dim), np.float32)
    t0 = time.perf_counter()
    _embed(embed, texts[:probe], f"minilm probe {probe}", out[:probe])
    per_row = (time.perf_counter() - t0) / probe
    eta_minutes = per_row * (n - probe) / 60
    say(f"MiniLM embeds {1 / per_row:,.0f} sentences/s here: {n:,} sentences need "
        f"~{n * per_row / 60:.1f} min (ETA {eta_minutes:.1f} min)")
    if max_minutes is not None and n > FALLBACK_N and eta_minutes > max_minutes:
        say(f"more than {max_minutes:g} min: using {FALLBACK_N:,} sentences instead of {n:,} "
            f"(--max-minutes 0 lifts the limit)")
        n = FALLBACK_N
        path = _paths(n, seed, n_queries, folder)[0]
        cached = _load(path, n)
        if cached is not None:
            return cached, path
        out, texts = out[:n], texts[:n]  # a prefix: the probe rows stay valid
    path = _paths(n, seed, n_queries, folder)[0]
    _embed(embed, texts, f"minilm corpus {n:,}", out, start=probe)
    _save(path, out)
    return out, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="corpus sentences (default 100000)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out query sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=12.0,
                        help=f"embed {FALLBACK_N} instead when n would take longer (0: no limit)")
    parser.add_argument("--show", type=int, default=0, help="print this many example sentences")
    args = parser.parse_args(argv)
    if args.show:
        for text in corpus_sentences(args.show, args.seed):
            print("corpus:", text)
        for text in query_sentences(args.show, args.seed):
            print("query: ", text)
        return 0
    data = load_or_embed(args.n, seed=args.seed, n_queries=args.queries,
                         max_minutes=args.max_minutes or None, say=print)
    source = "cache" if data.from_cache else f"embedded in {data.embed_seconds / 60:.1f} min"
    print(f"corpus {data.corpus.shape} -> {data.corpus_path}")
    print(f"queries {data.queries.shape} -> {data.queries_path}  ({source})")
    if data.n != args.n:
        print(f"NOTE: {data.n:,} sentences instead of the {args.n:,} asked for (time limit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
