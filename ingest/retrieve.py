"""Query text -> ranked hits (text, source, page, score, chunk id, why it ranked), one per page.

Modes (`MODES`):
  dense           cosine similarity of the query's and the chunks' embeddings (Chroma's HNSW).
  keyword         BM25 over the collection's keyword index (`ingest.keyword_index`).
  hybrid          both lists' candidates, ranked by DENSE_WEIGHT * cosine + KEYWORD_WEIGHT * BM25
                  / (the best BM25 of this query): a weighted sum, which beat reciprocal rank
                  fusion on the train split (bench/README.md).
  hybrid+rerank   hybrid, plus a reranker's score (`ingest.rerank`, "coverage" by default) times
                  its weight: the default.
Every hit's `score` is its cosine similarity to the query whatever the mode (what `min_score` and
the app's "not covered" threshold compare); `why` keeps the ranks and scores that placed it. The
final list holds one chunk per page (the best), so k hits are k different places. MMR (maximal
marginal relevance) optionally reorders the best pages so near-duplicates do not crowd out others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ingest.errors import QueryError
from ingest.rerank import CoverageReranker, Reranker, get_reranker
from ingest.store import Store

MODES = ("dense", "keyword", "hybrid", "hybrid+rerank")
DEFAULT_MODE = "hybrid+rerank"
CANDIDATES = 50  # from each of the dense and keyword lists; tuned on train (30 and 50 tie)
DENSE_WEIGHT, KEYWORD_WEIGHT = 1.0, 1.0  # tuned on train: 1:0.5 and 1:2 rank worse
MAX_QUERY_CHARS = 10_000  # above the chat's message cap; a longer query is a paste, not a question


@dataclass(frozen=True)
class Why:
    """Why a hit ranked where it did: its rank (1-based, among the candidates; None when that
    list did not find it) and score in each list, and the scores the mode combined."""

    mode: str
    dense_rank: int | None = None
    dense_score: float | None = None  # cosine similarity
    keyword_rank: int | None = None
    keyword_score: float | None = None  # BM25
    fused_score: float | None = None  # hybrid modes
    rerank_score: float | None = None  # hybrid+rerank: before the reranker's weight
    reranker: str | None = None
    final_score: float = 0.0  # what the mode sorted by

    def describe(self) -> str:
        """One line: 'dense #3 0.612 · keyword #1 12.40 · fused 1.612 · coverage 0.830 → 2.857
        (hybrid+rerank)'; a score without a rank: that mode did not consult the list."""

        def rank(n: int | None, score: float | None, digits: int) -> str:
            if not score:
                return "no match"
            return f"#{n} {score:.{digits}f}" if n else f"{score:.{digits}f} (not ranked)"

        parts = [
            f"dense {rank(self.dense_rank, self.dense_score, 3)}",
            f"keyword {rank(self.keyword_rank, self.keyword_score, 2)}",
        ]
        if self.fused_score is not None:
            parts.append(f"fused {self.fused_score:.3f}")
        if self.rerank_score is not None:
            parts.append(f"{self.reranker} {self.rerank_score:.3f}")
        return " · ".join(parts) + f" → {self.final_score:.3f} ({self.mode})"


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, ready to cite as `source`, page `page`."""

    text: str
    source: str
    page: int
    score: float  # cosine similarity to the query
    chunk_id: str
    doc_hash: str
    why: Why | None = field(default=None, compare=False)


@dataclass
class _Candidate:
    store: int
    chunk_id: str
    text: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    vector: np.ndarray | None = None
    cosine: float | None = None
    dense_rank: int | None = None
    bm25: float = 0.0
    keyword_rank: int | None = None


def check_query(query: str) -> str:
    """The query, stripped; `QueryError` with what to do for one that cannot be searched."""
    text = query.strip() if isinstance(query, str) else ""
    if not text:
        raise QueryError("The query is empty: type a question or some words to search for.")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(
            f"The query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}. "
            "Ask the question itself rather than pasting a document."
        )
    if not any(ch.isalnum() for ch in text):
        raise QueryError("The query has no letters or digits to search for; type some words.")
    return text


def retrieve(
    stores: Store | Sequence[Store],
    query: str,
    k: int = 5,
    *,
    mode: str = DEFAULT_MODE,
    candidates: int = CANDIDATES,
    min_score: float = -1.0,
    mmr: bool = False,
    fetch_k: int = 20,
    mmr_lambda: float = 0.5,
    reranker: str | Reranker = "coverage",
) -> list[Hit]:
    """The `k` best pages' chunks for `query` in one or more stores (the same embedder), with
    cosine score >= `min_score`, best first; `QueryError` for a query that cannot be searched."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    query = check_query(query)
    stores = [stores] if isinstance(stores, Store) else list(stores)
    totals = [s.count() for s in stores]  # once a query: each is a Chroma call
    stores, totals = [s for s, n in zip(stores, totals, strict=True) if n], [n for n in totals if n]
    if not stores:
        return []
    pool = max(candidates, k, fetch_k if mmr else 0)
    vector = stores[0].embedder.encode([query])[0]  # (D,): every mode reports the cosine
    found: dict[tuple[int, str], _Candidate] = {}
    if mode != "keyword":
        _dense(stores, totals, vector, pool, found)
    if mode != "dense":
        _keyword(stores, totals, query, pool, found)
    _complete(stores, vector, found, with_vectors=mmr)
    ranked = _rank(list(found.values()), query, mode, reranker, stores)
    ranked = [(c, why) for c, why in ranked if c.cosine >= min_score]
    ranked = _one_per_page(ranked)
    if mmr and ranked:
        ranked = [(c, why) for c, why in ranked if c.vector is not None][: max(k, fetch_k)]
        vectors = np.stack([c.vector for c, _ in ranked])  # (P, D)
        ranked = [ranked[i] for i in mmr_order(vector, vectors, k, mmr_lambda)]
    return [_hit(c, why) for c, why in ranked[:k]]


def _dense(
    stores: list[Store], totals: list[int], vector: np.ndarray, pool: int, found: dict
) -> None:
    rows = []
    for i, store in enumerate(stores):
        res = store.query(vector[None], pool, total=totals[i])
        for cid, text, meta, dist in zip(
            res["ids"][0],
            res["documents"][0],
            res["metadatas"][0],
            res["distances"][0],
            strict=True,
        ):
            rows.append(_Candidate(i, str(cid), str(text), dict(meta), cosine=1.0 - float(dist)))
    rows.sort(key=lambda c: (-c.cosine, c.store, c.chunk_id))
    for rank, cand in enumerate(rows[:pool], 1):
        cand.dense_rank = rank
        found[(cand.store, cand.chunk_id)] = cand


def _keyword(stores: list[Store], totals: list[int], query: str, pool: int, found: dict) -> None:
    rows, lookups = [], []
    for i, store in enumerate(stores):
        best, lookup = store.keyword_search(query, pool, totals[i])
        rows += [(score, i, cid) for cid, score in best]
        lookups.append(lookup)
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    for rank, (_, i, cid) in enumerate(rows[:pool], 1):
        found.setdefault((i, cid), _Candidate(i, cid)).keyword_rank = rank
    for (i, cid), cand in found.items():  # dense candidates get their BM25 score too
        cand.bm25 = lookups[i].get(cid, 0.0)


def _complete(stores: list[Store], vector: np.ndarray, found: dict, *, with_vectors: bool) -> None:
    """Fetch text, metadata and embedding of the candidates only one list has read."""
    for i, store in enumerate(stores):
        need = [
            c.chunk_id
            for c in found.values()
            if c.store == i and (c.cosine is None or (with_vectors and c.vector is None))
        ]
        if not need:
            continue
        got = store.chunks(need)
        for cid, text, meta, emb in zip(
            got["ids"], got["documents"], got["metadatas"], got["embeddings"], strict=True
        ):
            cand = found[(i, str(cid))]
            cand.text, cand.meta = str(text), dict(meta)
            cand.vector = np.asarray(emb, dtype=np.float32)
            cand.cosine = float(cand.vector @ vector)
    for key in [key for key, c in found.items() if c.cosine is None]:
        del found[key]  # deleted from Chroma since the keyword index saw it


def _rank(
    found: list[_Candidate],
    query: str,
    mode: str,
    reranker: str | Reranker,
    stores: list[Store],
) -> list[tuple[_Candidate, Why]]:
    """The candidates of `mode`, best first, each with its `Why`."""
    if mode == "dense":
        found = [c for c in found if c.dense_rank is not None]
    elif mode == "keyword":
        found = [c for c in found if c.keyword_rank is not None]
    top_bm25 = max((c.bm25 for c in found), default=0.0) or 1.0
    fused = [DENSE_WEIGHT * c.cosine + KEYWORD_WEIGHT * c.bm25 / top_bm25 for c in found]
    rerank = [None] * len(found)
    name = None
    if mode == "hybrid+rerank" and found:
        if isinstance(reranker, str):
            reranker = get_reranker(reranker, encode=lambda texts: stores[0].embedder.encode(texts))
        name = reranker.name
        texts = [c.text for c in found]
        if isinstance(reranker, CoverageReranker):  # sentence bags kept since indexing
            kept = [
                store.keyword.bags(c.chunk_id for c in found if c.store == i)
                for i, store in enumerate(stores)
            ]
            scores = reranker.score(query, texts, [kept[c.store].get(c.chunk_id) for c in found])
        else:
            scores = reranker.score(query, texts)
        rerank = [float(s) for s in scores]
    out = []
    for cand, fuse, extra in zip(found, fused, rerank, strict=True):
        final = {
            "dense": cand.cosine,
            "keyword": cand.bm25,
            "hybrid": fuse,
            "hybrid+rerank": fuse + (reranker.weight * extra if extra is not None else 0.0),
        }[mode]
        hybrid = mode.startswith("hybrid")
        why = Why(
            mode,
            cand.dense_rank,
            cand.cosine,
            cand.keyword_rank,
            cand.bm25,
            fuse if hybrid else None,
            extra,
            name,
            final,
        )
        out.append((cand, why))
    out.sort(key=lambda cw: (-cw[1].final_score, cw[0].store, cw[0].chunk_id))
    return out


def _one_per_page(ranked: list[tuple[_Candidate, Why]]) -> list[tuple[_Candidate, Why]]:
    """The best chunk of each page (pages of the same document in two stores count once)."""
    seen, out = set(), []
    for cand, why in ranked:
        page = (cand.meta["doc_hash"], int(cand.meta["page"]))
        if page not in seen:
            seen.add(page)
            out.append((cand, why))
    return out


def _hit(cand: _Candidate, why: Why) -> Hit:
    meta = cand.meta
    return Hit(
        cand.text,
        str(meta["source"]),
        int(meta["page"]),
        float(cand.cosine),
        cand.chunk_id,
        str(meta["doc_hash"]),
        why,
    )


def mmr_order(query: np.ndarray, candidates: np.ndarray, k: int, lam: float) -> list[int]:
    """Indices of `k` candidates chosen greedily by lam*sim(query) - (1-lam)*max sim(chosen)."""
    relevance = candidates @ query  # (P,)
    pairwise = candidates @ candidates.T  # (P, P)
    chosen: list[int] = []
    left = list(range(len(candidates)))
    while left and len(chosen) < k:
        redundancy = pairwise[np.ix_(left, chosen)].max(axis=1) if chosen else np.zeros(len(left))
        gain = lam * relevance[left] - (1.0 - lam) * redundancy
        best = left[int(np.argmax(gain))]
        chosen.append(best)
        left.remove(best)
    return chosen
