"""Retrieval quality benchmark: hit@1, hit@5 and MRR of `ingest.retrieve` in every mode (dense,
keyword, hybrid, hybrid+rerank) on two sets, in one run:

  real PDFs  Debian's gnuplot and Asymptote manuals (`bench/rag_pdfs.py`) and the answerable
             questions of `bench/rag_questions.json` with their file + page labels, per split
             (train: tuned on; test: every third question, never tuned on).
  KJV + Shakespeare  the 47-question set of tests/ingest/qa_set.py (pages = chapters / 60 lines).

Then query latency p50/p95 of the default mode at --chunks chunks (the manuals' chunks, plus
Shakespeare pages as filler up to that count), with the embedding of the query timed apart.

Usage: python bench/retrieval.py [--chunks 10000] [--skip-latency | --latency-only]
       [--precision auto]
The manuals are indexed once into data/bench/retrieval_store (a copy of bench/rag_answers.py's
store when it has one), the latency store once into data/bench/retrieval_latency; both reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rag_pdfs import manuals  # noqa: E402
from ingest import DEFAULT_MODE, MODES, Document, Embedder, Page, Store, retrieve  # noqa: E402
from tests.ingest.qa_set import corpus  # noqa: E402

STORE = ROOT / "data" / "bench" / "retrieval_store"
LATENCY_STORE = ROOT / "data" / "bench" / "retrieval_latency"  # the manuals plus filler
ANSWERS_STORE = ROOT / "data" / "bench" / "rag_store"  # bench/rag_answers.py's, same chunks
COLLECTION = "rag-bench"
QUESTIONS = ROOT / "bench" / "rag_questions.json"


def ranks(store: Store, queries: Sequence[str], labels: Sequence[set], mode: str) -> list[int]:
    """1-based rank of the first labelled (source, page) among the top 10, 0 when absent."""
    out = []
    for query, label in zip(queries, labels, strict=True):
        hits = retrieve(store, query, k=10, mode=mode)
        found = [i for i, h in enumerate(hits, 1) if (h.source, h.page) in label]
        out.append(found[0] if found else 0)
    return out


def figures(found: Sequence[int]) -> dict[str, float]:
    n = len(found)
    return {
        "n": n,
        "hit@1": sum(r == 1 for r in found) / n,
        "hit@5": sum(1 <= r <= 5 for r in found) / n,
        "mrr": sum(1 / r for r in found if r) / n,
    }


def row(name: str, mode: str, result: dict, dense: dict) -> str:
    return (
        f"| {name} | {mode} | {result['n']} | {result['hit@1']:.3f} | {result['hit@5']:.3f} | "
        f"{result['mrr']:.3f} | {result['hit@1'] - dense['hit@1']:+.3f} |"
    )


def copy_store(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    (target / "ingest.lock").unlink(missing_ok=True)  # the copy's lock is nobody's


def manual_store(embedder: Embedder) -> Store:
    if not STORE.exists() and (ANSWERS_STORE / "chroma.sqlite3").exists():
        copy_store(ANSWERS_STORE, STORE)  # indexing the manuals again would take minutes
    store = Store(COLLECTION, path=STORE, embedder=embedder)
    indexed = {d.source for d in store.list_documents()}
    for name, path in manuals().items():
        if name not in indexed:
            print(f"indexing {name} into {STORE} (once) ...", file=sys.stderr, flush=True)
            print(store.add_file(path).message, file=sys.stderr, flush=True)
    return store


def real_pdfs(store: Store) -> list[str]:
    questions = [q for q in json.loads(QUESTIONS.read_text()) if q["answerable"]]
    lines = []
    for split in ("train", "test"):
        chosen = [q for q in questions if q["split"] == split]
        labels = [{(q["doc"], q["page"])} for q in chosen]
        queries = [q["question"] for q in chosen]
        results = {m: figures(ranks(store, queries, labels, m)) for m in MODES}
        lines += [row(f"real PDFs, {split}", m, results[m], results["dense"]) for m in MODES]
    return lines


def kjv_shakespeare(embedder: Embedder) -> list[str]:
    documents, questions = corpus()
    with tempfile.TemporaryDirectory() as tmp, Store("qa", path=tmp, embedder=embedder) as store:
        for document in documents:
            store.add_document(document)
        labels = [{(q.source, p) for p in q.pages} for q in questions]
        queries = [q.query for q in questions]
        results = {m: figures(ranks(store, queries, labels, m)) for m in MODES}
    return [row("KJV + Shakespeare", m, results[m], results["dense"]) for m in MODES]


def filler(n_chunks: int) -> list[Document]:
    """Shakespeare's plays as 30-line pages: about one chunk a page."""
    from tests.ingest.qa_set import _site

    docs, total = [], 0
    for path in sorted((_site("shksprdata") / "texts").glob("*_gut.txt")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        pages = [
            Page("\n".join(lines[i : i + 30]), path.stem, i // 30 + 1)
            for i in range(0, len(lines), 30)
        ]
        pages = [p for p in pages if p.text.strip()][: max(0, n_chunks - total)]
        docs.append(Document(path.stem, f"filler-{path.stem}-{len(pages)}", "text", pages))
        total += len(pages)
        if total >= n_chunks:
            break
    return docs


def latency(store: Store, n_chunks: int, queries: Sequence[str]) -> str:
    """p50/p95 of the default mode's query, at n_chunks chunks (filler added to the store)."""
    for document in filler(max(0, n_chunks - store.count())):
        if store.count() >= n_chunks:
            break
        store.add_document(document)
    retrieve(store, queries[0], k=5)  # the BM25 matrix is rebuilt once after the adds
    totals, embeds = [], []
    for query in list(queries) * 2:
        start = time.perf_counter()
        store.embedder.encode([query])
        embeds.append(time.perf_counter() - start)
        start = time.perf_counter()
        retrieve(store, query, k=5, mode=DEFAULT_MODE)
        totals.append(time.perf_counter() - start)

    def pct(values: list[float], q: int) -> float:
        return statistics.quantiles(values, n=100)[q - 1] * 1000

    return (
        f"latency, {DEFAULT_MODE}, {store.count()} chunks, {len(totals)} queries: "
        f"p50 {pct(totals, 50):.1f} ms, p95 {pct(totals, 95):.1f} ms "
        f"(of which the query's embedding: p50 {pct(embeds, 50):.1f} ms, "
        f"p95 {pct(embeds, 95):.1f} ms)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="latency at this many chunks")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="skip the quality sets")
    parser.add_argument("--precision", default="auto", help="the embedder's (auto, fp32, ...)")
    args = parser.parse_args(argv)
    embedder = Embedder(precision=args.precision)
    print(f"embedder: {embedder.precision}; candidates and weights: ingest/retrieve.py")
    with manual_store(embedder) as store:
        if not args.latency_only:
            print("| set | mode | questions | hit@1 | hit@5 | MRR | hit@1 vs dense |")
            print("|---|---|---|---|---|---|---|")
            print("\n".join(real_pdfs(store)), flush=True)
    if not args.latency_only:
        print("\n".join(kjv_shakespeare(embedder)), flush=True)
    if not args.skip_latency:
        questions = [q["question"] for q in json.loads(QUESTIONS.read_text())]
        if not LATENCY_STORE.exists():
            copy_store(STORE, LATENCY_STORE)  # filler goes into a copy; kept for later runs
        with Store(COLLECTION, path=LATENCY_STORE, embedder=embedder) as store:
            print(latency(store, args.chunks, questions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
