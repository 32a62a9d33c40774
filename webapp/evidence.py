"""Evidence for a RAG answer: the sentences of the retrieved sources that answer the question,
found by the embedder at sentence level, so the answer can quote them with file and page. (The
sources' order is retrieval's: `ingest.retrieve`, whose rerankers score sentences the same way.)

A 135M model copies a quoted sentence far more reliably than it finds one in four long passages,
so the sentence is also what the prompt puts in front of it (`core.generate.prompts.rag`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from core.generate.prompts import NOT_COVERED
from ingest import Hit
from ingest.keyword_index import coverage
from ingest.rerank import sentences

__all__ = ["Evidence", "excerpt", "find_evidence", "not_covered", "sentences", "with_quote"]
KEYWORD_WEIGHT = 0.5  # tuned on the train split of bench/rag_answers.py


@dataclass(frozen=True)
class Evidence:
    """A sentence of source [number] (`source`, page `page`) and its similarity to the question."""

    number: int
    sentence: str
    source: str
    page: int
    score: float

    @property
    def label(self) -> str:
        return f"{self.source}, page {self.page}"


def find_evidence(
    question: str,
    hits: Sequence[Hit],
    encode: Callable[[Sequence[str]], np.ndarray],
    k: int | None = 1,
    keyword_weight: float = KEYWORD_WEIGHT,
) -> list[Evidence]:
    """The `k` (None: all) sentences of `hits` closest to `question`, best first; `hits[i]` is
    source i + 1.

    Score: cosine of the embeddings plus `keyword_weight` times the share of the question's
    words (weighted by rarity among these sentences) that the sentence contains, since exact
    names (a command, an option) are where sentence embeddings fall short."""
    candidates = [(n, hit, s) for n, hit in enumerate(hits, 1) for s in sentences(hit.text)]
    if not candidates:
        return []
    texts = [s for _, _, s in candidates]
    vectors = encode([question, *texts])  # (1 + N, dim), normalised
    scores = vectors[1:] @ vectors[0] + keyword_weight * coverage(question, texts)  # (N,)
    found, seen = [], set()
    for i in np.argsort(-scores, kind="stable"):
        n, hit, sentence = candidates[int(i)]
        if sentence in seen:
            continue
        seen.add(sentence)
        found.append(Evidence(n, sentence, hit.source, hit.page, float(scores[i])))
        if k is not None and len(found) == k:
            break
    return found


def excerpt(text: str, around: str | None, max_chars: int) -> str:
    """At most `max_chars` of a passage: whole sentences around `around` (or from the start)."""
    parts = sentences(text)
    if not parts:
        return " ".join(text.split())[:max_chars]
    centre = parts.index(around) if around in parts else 0
    lo = hi = centre
    kept = len(parts[centre])
    while True:  # grow one sentence at a time, after first, while it fits
        grown = False
        for j in (hi + 1, lo - 1):
            if 0 <= j < len(parts) and kept + 1 + len(parts[j]) <= max_chars:
                kept += 1 + len(parts[j])
                lo, hi = min(lo, j), max(hi, j)
                grown = True
        if not grown:
            break
    return " ".join(parts[lo : hi + 1])[: max_chars + 2]


def with_quote(answer: str, evidence: Sequence[Evidence]) -> str:
    """The answer, then each evidence sentence quoted verbatim with its citation, file and page."""
    if not evidence:
        return answer
    quotes = "\n>\n".join(f'> "{e.sentence}" [{e.number}] ({e.label})' for e in evidence)
    return f"{answer}\n\n{quotes}"


def not_covered(hits: Sequence[Hit]) -> str:
    """The answer when no source scores high enough: say so, and name the closest passages."""
    closest = "; ".join(f"[{n}] {hit.source}, page {hit.page}" for n, hit in enumerate(hits, 1))
    return f"{NOT_COVERED} The closest passages: {closest}." if hits else NOT_COVERED
