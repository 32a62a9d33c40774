"""Evidence for a RAG answer: the sentences of the retrieved sources that answer the question,
found by the embedder at sentence level, so the answer can quote them with file and page.

A 135M model copies a quoted sentence far more reliably than it finds one in four long passages,
so the sentence is also what the prompt puts in front of it (`core.generate.prompts.rag`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from core.generate.prompts import NOT_COVERED
from ingest import Hit

# A sentence ends at . ! ? followed by space and a capital, quote, bracket or digit; a blank line
# or a line ending in ':' (manuals introduce examples that way) ends one too.
_BOUNDARY = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])|\n\s*\n|(?<=:)\n")
_WORD = re.compile(r"\w+")
_LEADER = re.compile(r"(?:\. ?){4,}")  # a table of contents' or index's dot leaders
MAX_SENTENCE_CHARS = 320
KEYWORD_WEIGHT = 0.5  # tuned on the train split of bench/rag_answers.py
STOPWORDS = frozenset(
    _WORD.findall(
        "a an the and or of to in on for with by at from is are was be do does did how what which "
        "who whom when where why can could should would i you it its this that these those my "
        "your me use used using get set make there their them than then as if into about"
    )
)


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


def sentences(text: str) -> list[str]:
    """The sentences of a passage, whitespace collapsed; fragments of under three words and
    table-of-contents lines dropped."""
    out = []
    for part in _BOUNDARY.split(text):
        sentence = " ".join(part.split())
        if len(_WORD.findall(sentence)) < 3 or _LEADER.search(sentence):
            continue
        if len(sentence) > MAX_SENTENCE_CHARS:
            sentence = sentence[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " …"
        out.append(sentence)
    return out


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
    scores = vectors[1:] @ vectors[0] + keyword_weight * keyword_overlap(question, texts)  # (N,)
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


def keyword_overlap(question: str, texts: Sequence[str]) -> np.ndarray:
    """(N,) share of the question's content words in each text, each word weighted by its
    inverse document frequency among `texts`."""
    words = {w for w in _WORD.findall(question.lower()) if w not in STOPWORDS and len(w) > 1}
    if not words or not texts:
        return np.zeros(len(texts))
    present = np.array([[w in set(_WORD.findall(t.lower())) for w in words] for t in texts])
    idf = np.log((1 + len(texts)) / (1 + present.sum(0))) + 1.0  # (W,)
    return (present * idf).sum(1) / idf.sum()


def rerank(
    question: str,
    hits: Sequence[Hit],
    encode: Callable[[Sequence[str]], np.ndarray],
    keep: int,
    n_evidence: int = 2,
) -> tuple[list[Hit], list[Evidence]]:
    """The `keep` hits whose best sentence scores highest (the best sentence decides), best
    first, and the `n_evidence` best sentences among them, numbered for the reordered list."""
    ranked = find_evidence(question, hits, encode, k=None)
    order: list[int] = []
    for e in ranked:
        if e.number not in order:
            order.append(e.number)
    order += [n for n in range(1, len(hits) + 1) if n not in order]
    kept = [hits[n - 1] for n in order[:keep]]
    position = {n: i for i, n in enumerate(order[:keep], 1)}
    evidence = [replace(e, number=position[e.number]) for e in ranked if e.number in position]
    return kept, evidence[:n_evidence]


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
