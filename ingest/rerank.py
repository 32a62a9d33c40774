"""Rerankers: rescore the fused candidates of a hybrid search, where "the best sentence decides".

A reranker is anything with a `name`, a `weight` (how much its score counts against the fused
score) and `score(query, texts) -> (N,) floats`, higher better. Built in, by name:
  coverage            the IDF-weighted share of the query's words that a candidate's best sentence
                      holds: no model; a passage's sentences are tokenized once and cached, so one
                      an earlier query saw costs ~nothing (the default; bench/README.md).
  sentence-embedding  the best sentence's cosine to the query with the store's embedder, plus the
                      coverage; embeds every candidate sentence per query (seconds on a CPU).
  cross-encoder       a sentence-transformers CrossEncoder from a local directory (`model=` or
                      SCRATCHGPT_CROSS_ENCODER); never downloads.
`register_reranker` adds more.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any, Protocol

import numpy as np

from ingest.keyword_index import bag_coverage, coverage, word_bag

# A sentence ends at . ! ? followed by space and a capital, quote, bracket or digit; a blank line
# or a line ending in ':' (manuals introduce examples that way) ends one too.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|(?<=:)\n")
_THREE_WORDS = re.compile(r"\w++\W++\w++\W++\w")  # possessive: no backtracking, same matches
_LEADER = re.compile(r"(?:\. ?){4,}")  # a table of contents' or index's dot leaders
MAX_SENTENCE_CHARS = 320
COVERAGE_WEIGHT = 1.5  # tuned on the train split of bench/retrieval.py's real-PDF set


def sentences(text: str) -> list[str]:
    """The sentences of a passage, whitespace collapsed; fragments of under three words and
    table-of-contents lines dropped."""
    out = []
    for part in _BOUNDARY.split(text):
        sentence = " ".join(part.split())
        if not _THREE_WORDS.search(sentence) or _LEADER.search(sentence):
            continue
        if len(sentence) > MAX_SENTENCE_CHARS:
            sentence = sentence[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " …"
        out.append(sentence)
    return out


class Reranker(Protocol):
    """Scores candidates against a query; `weight` scales the score before it is added."""

    name: str
    weight: float

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray: ...


def best_sentence(texts: Sequence[str], score: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """(N,) the best score among each text's sentences (a text without any: scored whole)."""
    parts = [sentences(t) or [" ".join(t.split())] for t in texts]
    return _best_of(parts, score)


def _best_of(
    parts: Sequence[Sequence[Any]], score: Callable[[list[Any]], np.ndarray]
) -> np.ndarray:
    """(N,) the best of `score(all parts)` among each text's parts."""
    flat = [s for p in parts for s in p]
    if not flat:
        return np.zeros(len(parts))
    scores = score(flat)
    owner = np.repeat(np.arange(len(parts)), [len(p) for p in parts])  # (S,) text of each
    best = np.full(len(parts), -np.inf)
    np.maximum.at(best, owner, scores)
    return best


@lru_cache(maxsize=8192)  # the same passages come back query after query: tokenize them once
def sentence_bags(text: str) -> tuple[frozenset[str], ...]:
    """The `tokenize`d word set of each of a passage's `sentences` (the whole text without any)."""
    return tuple(map(word_bag, sentences(text) or [" ".join(text.split())]))


class CoverageReranker:
    """The best sentence's IDF-weighted share of the query's words (IDF among the candidates'
    sentences), so a passage that names all of the question's rare words in one place wins."""

    name = "coverage"

    def __init__(self, weight: float = COVERAGE_WEIGHT) -> None:
        self.weight = weight

    def score(
        self,
        query: str,
        texts: Sequence[str],
        bags: Sequence[Sequence[frozenset[str]] | None] | None = None,
    ) -> np.ndarray:
        """`bags`: each text's `sentence_bags` where already known (the keyword index keeps
        them), else None; the rest are computed (and cached)."""
        known = bags if bags is not None else [None] * len(texts)
        pairs = zip(texts, known, strict=True)
        parts = [b if b is not None else sentence_bags(t) for t, b in pairs]
        return _best_of(parts, lambda flat: bag_coverage(query, flat))


class EmbeddingReranker:
    """The best sentence by cosine to the query (the embedder's `encode`) plus `keyword_weight`
    times its coverage: the RAG evidence's sentence score, applied to every candidate."""

    name = "sentence-embedding"

    def __init__(
        self,
        encode: Callable[[Sequence[str]], np.ndarray],
        keyword_weight: float = 0.5,
        weight: float = COVERAGE_WEIGHT,
    ) -> None:
        self.encode, self.keyword_weight, self.weight = encode, keyword_weight, weight

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        def scores(flat: list[str]) -> np.ndarray:
            vectors = self.encode([query, *flat])  # (1 + S, D), unit length
            return vectors[1:] @ vectors[0] + self.keyword_weight * coverage(query, flat)

        return best_sentence(texts, scores)


class CrossEncoderReranker:
    """A sentence-transformers CrossEncoder loaded from a local directory (never downloads)."""

    name = "cross-encoder"

    def __init__(self, model: str | None = None, *, device: str = "cpu", weight: float = 1.0):
        model = model or os.environ.get("SCRATCHGPT_CROSS_ENCODER")
        if not model or not os.path.isdir(model):
            raise ValueError(
                "The cross-encoder reranker needs a local model directory: pass model=DIR or set "
                f"SCRATCHGPT_CROSS_ENCODER (got {model!r}); nothing is downloaded."
            )
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model, device=device, local_files_only=True)
        self.weight = weight

    def score(self, query: str, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros(0)
        return np.asarray(self.model.predict([(query, t) for t in texts]), dtype=np.float64)


# name -> factory(**context); context: `encode` (the store's embedder, loaded on demand)
_RERANKERS: dict[str, Callable[..., Reranker]] = {
    "coverage": lambda **_: CoverageReranker(),
    "sentence-embedding": lambda encode, **_: EmbeddingReranker(encode),
    "cross-encoder": lambda **_: CrossEncoderReranker(),
}


def register_reranker(name: str, factory: Callable[..., Reranker]) -> None:
    """Make `factory(encode=...) -> Reranker` available to `get_reranker(name)`."""
    _RERANKERS[name] = factory


def reranker_names() -> list[str]:
    return sorted(_RERANKERS)


def get_reranker(name: str, **context: Any) -> Reranker:
    """The reranker registered as `name`; ValueError naming the choices for an unknown one."""
    if name not in _RERANKERS:
        raise ValueError(f"Unknown reranker {name!r}; choose one of {', '.join(reranker_names())}.")
    return _RERANKERS[name](**context)
