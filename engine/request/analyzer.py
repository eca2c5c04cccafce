"""The full-text analyzer: how a `full_text` field's string (and a query's `text=`) becomes the
terms BM25 counts. Version 1, the only one so far:

1. NFKC, ``str.casefold()``, NFKC again (Unicode's NFKC_Casefold, approximated): full-width,
   ligature and compatibility forms fold to their plain letters ("ﬁ" -> "fi", "Ｆｏｘ" -> "fox",
   "ℌ" -> "h"), and case folds beyond ASCII ("Straße" -> "strasse", "ΣΟΦΊΑ" -> "σοφία").
2. Tokens are the maximal runs of Unicode word characters (Python ``re`` ``\\w``: letters,
   digits, marks and underscore of every script); everything else separates. A run of CJK
   ideographs stays one token (no word segmentation); "e-mail" is two tokens, "e_mail" one.
3. Tokens longer than MAX_TOKEN_CHARS are dropped (as Lucene's StandardAnalyzer does past its
   255-char limit): a base64 blob or URL run-on is not a word, and one would bloat the terms.
4. English stop words are dropped: STOP_WORDS, Lucene's EnglishAnalyzer default set (the 33
   words bm25s also ships as ``bm25s.stopwords.STOPWORDS_EN``; a frozen copy here, so an
   upgrade of any library cannot change an index's terms). No stemming.

``ANALYZER_VERSION`` is stored in an index's CONFIG with its BM25 parameters. Any change to the
steps above, to STOP_WORDS or to MAX_TOKEN_CHARS must bump it: an index records the version it
was built with, and a build of lsmvec whose analyzer differs must refuse (or re-analyse) rather
than silently score new queries against terms cut differently. The output depends on the text
only (no locale, no environment): the same string gives the same terms on every machine.
"""
from __future__ import annotations

import re
import unicodedata

ANALYZER_VERSION = 1

MAX_TOKEN_CHARS = 255

STOP_WORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is",
    "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with"))

_WORD = re.compile(r"\w+")  # str patterns are Unicode-aware by default


def normalise(text: str) -> str:
    """Step 1. NFKC before folding turns "ℌ" into "H" so it folds; after, because folding can
    leave sequences that are not NFKC."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def analyze(text: str) -> list[str]:
    """The terms of `text` in order, repeats kept (a term's count is its frequency)."""
    return [token for token in _WORD.findall(normalise(text))
            if len(token) <= MAX_TOKEN_CHARS and token not in STOP_WORDS]


def query_terms(text: str) -> list[str]:
    """The distinct terms of a query, in first-occurrence order: "fox fox" scores as "fox"."""
    return list(dict.fromkeys(analyze(text)))


def describe() -> dict:
    """What CONFIG stores beside k1 and b, so an index names the analyzer it was built with."""
    return {"analyzer_version": ANALYZER_VERSION}
