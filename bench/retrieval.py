"""Retrieval quality benchmark: hit@5 and MRR@5 of `ingest.retrieve` on the 47-question set over KJV
chapters and Shakespeare pages (tests/ingest/qa_set.py), fp32 baseline vs the embedder's auto
precision (bf16 autocast where the CPU has native bf16, int8 on other AVX2 CPUs), with and
without MMR.

Usage: python bench/retrieval.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ingest import Embedder, Store, retrieve
from tests.ingest.qa_set import corpus, score


def run(precision: str, mmr: bool, backend: str = "auto") -> tuple[dict, float]:
    documents, questions = corpus()
    embedder = Embedder(precision=precision, int8_backend=backend)
    with tempfile.TemporaryDirectory() as tmp, Store("qa", path=tmp, embedder=embedder) as store:
        start = time.perf_counter()
        for document in documents:
            store.add_document(document)
        seconds = time.perf_counter() - start
        ranked = [
            [(h.source, h.page) for h in retrieve(store, q.query, k=5, mmr=mmr)] for q in questions
        ]
    result = score(ranked, questions, k=5)
    result["precision"] = embedder.precision
    if embedder.precision == "int8":
        result["precision"] += f" ({embedder.backend})"
    return result, seconds


def main() -> None:
    print("| embedder | MMR | questions | hit@5 | MRR@5 | index s | hit@5 vs fp32 | MRR vs fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    runs = [
        ("fp32", False, "auto"),
        ("auto", False, "auto"),
        ("int8", False, "torch"),
        ("fp32", True, "auto"),
    ]
    for precision, mmr, backend in runs:
        result, seconds = run(precision, mmr, backend)
        base = base if base is not None else result
        print(
            f"| {result['precision']} | {'yes' if mmr else 'no'} | {result['questions']} | "
            f"{result['hit@5']:.3f} | {result['mrr']:.3f} | {seconds:.0f} | "
            f"{result['hit@5'] - base['hit@5']:+.3f} | {result['mrr'] - base['mrr']:+.3f} |"
        )


if __name__ == "__main__":
    main()
