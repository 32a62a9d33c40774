"""The keyword half of hybrid search: a BM25 index (`bm25s`) of one collection's chunks, kept in
files beside the Chroma store, and the tokenizer it and the reranker share.

Chroma is the source of truth. The index keeps one file per document (its chunk ids and tokens, and
each chunk's sentence word sets for the coverage reranker, written atomically), so adding or
deleting a document touches one file; the BM25 matrix depends on every document (IDF, mean length),
so it is rebuilt from the token files, lazily, before the first search after a change (~0.1 s per
10k chunks). `sync` compares the chunk ids with Chroma's and re-reads what differs: a missing or
out-of-date index (a crash between the two writes, another replica's add on a shared server) is
rebuilt from Chroma, never searched silently empty.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

# words; a CJK character is a word of its own (those scripts put no spaces between words)
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an the and or of to in on for with by at from is are was be do does did how what which "
        "who whom when where why can could should would i you it its this that these those my your "
        "me use used using get set make there their them than then as if into about",
    )
)
_SUFFIXES = ("ing", "ed", "es", "s")  # a light stemmer: 'labels' and 'label' match, 'filled' 'fill'
# bump when tokenization or sentence splitting changes: indexes of another format are rebuilt
# from Chroma (2: each chunk's sentence bags kept, so a cold query tokenizes no candidate)
FORMAT = 2
K1, B = 1.2, 0.75  # BM25's usual constants; 0.9-1.5 and 0.4-0.9 changed nothing on train


@lru_cache(maxsize=1 << 16)  # words repeat: reranking re-tokenizes candidates' sentences per query
def _stem(word: str) -> str:
    if len(word) < 5 or not word.isalpha():
        return word  # names and options ('-persist', 'x11colors') stay as written
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def tokenize(text: str) -> list[str]:
    """Lower-cased, lightly stemmed words of `text`, stopwords dropped."""
    return [_stem(w) for w in _TOKEN.findall(text.lower()) if w not in STOPWORDS]


def word_bag(text: str) -> frozenset[str]:
    """`frozenset(tokenize(text))`, stemming each distinct word once."""
    return frozenset(map(_stem, set(_TOKEN.findall(text.lower())) - STOPWORDS))


def coverage(query: str, texts: Sequence[str]) -> np.ndarray:
    """(N,) share of the query's words each text contains, each word weighted by its inverse
    document frequency among `texts` (so the rare, naming words count most)."""
    return bag_coverage(query, [word_bag(t) for t in texts])


def bag_coverage(query: str, bags: Sequence[frozenset[str]]) -> np.ndarray:
    """`coverage` of texts given as their sets of `tokenize`d words (tokenized once, reused)."""
    words = sorted(set(tokenize(query)))
    if not words or not bags:
        return np.zeros(len(bags))
    present = np.array([[w in bag for w in words] for bag in bags])  # (N, W)
    idf = np.log((1 + len(bags)) / (1 + present.sum(0))) + 1.0  # (W,)
    return (present * idf).sum(1) / idf.sum()


def _write_json(path: Path, data: Any) -> None:
    """Write `data` to `path` atomically: a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class KeywordIndex:
    """BM25 over one collection's chunks, persisted under `directory` (one JSON file a document).

    `source_weight`: the file name's words are added to each chunk's words this many times (a
    title field), so 'in gnuplot' favours gnuplot.pdf. `bags`: a chunk's text -> the word sets of
    its sentences (`ingest.rerank.sentence_bags`), computed once when the chunk is added and kept
    in its file (`bags()` reads them back)."""

    def __init__(
        self,
        directory: str | Path,
        source_weight: int = 1,
        bags: Callable[[str], Sequence[frozenset[str]]] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.source_weight = source_weight
        self._bagger = bags
        self._lock = threading.RLock()
        self._docs: dict[str, dict[str, Any]] = {}  # doc_hash -> {"ids": [...], "tokens": [...]}
        self._bm25: Any = None
        self._rows: list[str] = []  # chunk id of each BM25 row
        self._where: dict[str, tuple[str, int]] | None = None  # chunk id -> (doc_hash, position)
        self._dirty = True
        self._load()

    def _doc_path(self, doc_hash: str) -> Path:
        return self.directory / f"{doc_hash}.json"

    def _load(self) -> None:
        """Read the token files; unreadable or other-format ones are left to `sync` to redo."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for path in self.directory.glob("*.json"):
            try:
                doc = json.loads(path.read_text())
                if doc.get("format") != FORMAT or (self._bagger and "bags" not in doc):
                    raise ValueError("another format")
                self._docs[path.stem] = doc
            except (OSError, ValueError):
                path.unlink(missing_ok=True)

    # -- writes ----------------------------------------------------------------------------------

    def add(self, doc_hash: str, source: str, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Index one document's chunks (replacing what the index held for it)."""
        title = tokenize(Path(source).stem) * self.source_weight
        tokens = [" ".join(tokenize(text) + title) for text in texts]
        doc = {"format": FORMAT, "source": source, "ids": list(ids), "tokens": tokens}
        if self._bagger is not None:  # each sentence's words, space-separated
            doc["bags"] = [[" ".join(sorted(bag)) for bag in self._bagger(t)] for t in texts]
        with self._lock:
            _write_json(self._doc_path(doc_hash), doc)
            self._docs[doc_hash] = doc
            self._dirty, self._where = True, None

    def remove(self, doc_hash: str) -> None:
        """Forget one document (a no-op when the index does not hold it)."""
        with self._lock:
            self._doc_path(doc_hash).unlink(missing_ok=True)
            if self._docs.pop(doc_hash, None) is not None:
                self._dirty, self._where = True, None

    def clear(self, recreate: bool = True) -> None:
        """Forget everything (the collection was dropped); `recreate` keeps an empty index."""
        with self._lock:
            shutil.rmtree(self.directory, ignore_errors=True)
            if recreate:
                self.directory.mkdir(parents=True, exist_ok=True)
            self._docs.clear()
            self._dirty, self._where = True, None

    # -- agreement with Chroma -------------------------------------------------------------------

    def chunk_ids(self) -> dict[str, str]:
        """chunk id -> doc hash, for every chunk the index holds."""
        with self._lock:
            return {cid: h for h, doc in self._docs.items() for cid in doc["ids"]}

    def count(self) -> int:
        with self._lock:
            return sum(len(doc["ids"]) for doc in self._docs.values())

    def sync(self, ids: Iterable[str], fetch: Any) -> int:
        """Make the index hold exactly the chunks `ids` (Chroma's); `fetch(doc_hashes)` returns
        {doc_hash: (source, ids, texts)} for the documents to re-read. Returns how many documents
        were re-read or dropped."""
        want = set(ids)
        with self._lock:
            have = self.chunk_ids()
            stale = {h for cid, h in have.items() if cid not in want}  # deleted in Chroma
            missing = want - have.keys()  # added in Chroma: their docs are found by fetching
            for doc_hash in stale:
                self.remove(doc_hash)
            if not missing:
                return len(stale)
            fetched = fetch(missing)
            for doc_hash, (source, doc_ids, texts) in fetched.items():
                self.add(doc_hash, source, doc_ids, texts)
            return len(stale) + len(fetched)

    def bags(self, chunk_ids: Iterable[str]) -> dict[str, tuple[frozenset[str], ...]]:
        """The kept sentence bags of those of `chunk_ids` the index holds with bags."""
        with self._lock:
            if self._where is None:
                self._where = {
                    cid: (h, i)
                    for h, doc in self._docs.items()
                    if "bags" in doc
                    for i, cid in enumerate(doc["ids"])
                }
            out = {}
            for cid in chunk_ids:
                if (at := self._where.get(cid)) is not None:
                    kept = self._docs[at[0]]["bags"][at[1]]
                    out[cid] = tuple(frozenset(words.split()) for words in kept)
            return out

    # -- search ----------------------------------------------------------------------------------

    def _ensure_built(self) -> None:
        if not self._dirty:
            return
        import bm25s  # deferred: only searches need it

        rows, corpus = [], []
        for doc in self._docs.values():
            rows.extend(doc["ids"])
            corpus.extend(t.split() for t in doc["tokens"])
        self._rows, self._bm25 = rows, None
        if rows:
            self._bm25 = bm25s.BM25(k1=K1, b=B)
            self._bm25.index(corpus, show_progress=False)
        self._dirty = False

    def _score_all(self, query: str) -> tuple[list[str], np.ndarray]:
        """(chunk id of each row, (N,) BM25 scores of `query`); nothing when no word is known."""
        with self._lock:
            self._ensure_built()
            if self._bm25 is None:
                return [], np.zeros(0)
            vocab = self._bm25.vocab_dict
            ids = [vocab[w] for w in dict.fromkeys(tokenize(query)) if w in vocab]
            if not ids:
                return [], np.zeros(0)
            return self._rows, self._bm25.get_scores_from_ids(ids)

    def search(self, query: str, k: int) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """The `k` best (chunk id, BM25 score) for `query`, best first, only chunks sharing a word
        with it; and every chunk's score, for fusing other lists."""
        rows, scores = self._score_all(query)
        if not rows:
            return [], {}
        top = np.argpartition(-scores, min(k, len(rows) - 1))[:k] if len(rows) > k else None
        order = np.arange(len(rows)) if top is None else top
        order = order[np.lexsort((order, -scores[order]))]  # best first, ties by row
        best = [(rows[i], float(scores[i])) for i in order if scores[i] > 0]
        return best, dict(zip(rows, scores.tolist(), strict=True))
