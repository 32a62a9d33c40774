"""Query text -> ranked hits (text, source, page, score, chunk id): top-k, score floor, MMR.

Scores are cosine similarities in [-1, 1] (the vectors are unit length, Chroma returns 1 - cos).
MMR (maximal marginal relevance) re-ranks a larger candidate pool so near-duplicate chunks do not
crowd out other sources.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingest.store import Store


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk, ready to cite as `source`, page `page`."""

    text: str
    source: str
    page: int
    score: float
    chunk_id: str
    doc_hash: str


def retrieve(
    store: Store,
    query: str,
    k: int = 5,
    *,
    min_score: float = -1.0,
    mmr: bool = False,
    fetch_k: int = 20,
    mmr_lambda: float = 0.5,
) -> list[Hit]:
    """The `k` best chunks for `query` with score >= `min_score`, best first."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0.0 <= mmr_lambda <= 1.0:
        raise ValueError(f"mmr_lambda must be in [0, 1], got {mmr_lambda}")
    if not query.strip() or store.count() == 0:
        return []
    vector = store.embedder.encode([query])  # (1, D)
    pool = max(k, fetch_k) if mmr else k
    res = store.query(vector, pool, with_embeddings=mmr)
    scores = [1.0 - float(d) for d in res["distances"][0]]
    hits = [
        Hit(
            str(text),
            str(meta["source"]),
            int(meta["page"]),
            score,
            str(cid),
            str(meta["doc_hash"]),
        )
        for cid, text, meta, score in zip(
            res["ids"][0], res["documents"][0], res["metadatas"][0], scores, strict=True
        )
        if score >= min_score
    ]
    if mmr and hits:
        keep = {h.chunk_id for h in hits}
        rows = [i for i, cid in enumerate(res["ids"][0]) if cid in keep]
        vectors = np.asarray(res["embeddings"][0], dtype=np.float32)[rows]  # (P, D)
        order = mmr_order(vector[0], vectors, k, mmr_lambda)
        return [hits[i] for i in order]
    return hits[:k]


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
