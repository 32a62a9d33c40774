"""Decoding speed where the app decodes: in worker threads, not the main thread.

    .venv/bin/python bench/threads.py [--new-tokens 96] [--repeats 3]

Prints greedy tok/s of the default model on the main thread (the baseline), in a worker thread
after other threads have run parallel torch ops (as Gradio's worker threads have), and two
replies at once in two threads (they take turns per step: `core/turns.py`), with ratios to the
baseline; then the document embedder (torch's own ops) on the main thread and in a worker, and
greedy in a worker thread started after the embedder ran.
With the kernels on OpenMP, the worker thread decoded at ~0.4x (bench/README.md).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from core.generate.decode import stream_tokens
from core.generate.engine import LLM


def rate(llm: LLM, ids: list[int], n: int) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        count = sum(1 for _ in stream_tokens(llm.model, ids, max_new_tokens=n, stop_ids=set()))
    return count / (time.perf_counter() - start)


def in_threads(k: int, work) -> list[float]:
    out: list[float] = []
    threads = [threading.Thread(target=lambda: out.append(work())) for _ in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm = LLM.load("default")
    ids = llm.tokenizer.encode("Write a story about the sea and a lighthouse keeper. " * 3)
    # other threads run parallel torch ops first, as the app's worker threads do (embedding...)
    in_threads(3, lambda: float(torch.randn(4_000_000).mul(2).sum()))
    best = {"main thread": 0.0, "a worker thread": 0.0, "two at once (sum)": 0.0}
    for _ in range(args.repeats):  # interleaved; the best of each counts
        best["main thread"] = max(best["main thread"], rate(llm, ids, args.new_tokens))
        worker = in_threads(1, lambda: rate(llm, ids, args.new_tokens))[0]
        best["a worker thread"] = max(best["a worker thread"], worker)
        both = sum(in_threads(2, lambda: rate(llm, ids, args.new_tokens)))
        best["two at once (sum)"] = max(best["two at once (sum)"], both)
    base = best["main thread"]
    print(f"greedy, {args.new_tokens} new tokens, {torch.get_num_threads()} threads, {llm.path}")
    for name, value in best.items():
        print(f"{name:>20}: {value:6.1f} tok/s  {value / base:.2f}x")
    embedding(args.repeats)
    # threads started after an embedding (Gradio starts workers as it needs them) must keep the
    # process's torch thread count: the embedder's one-thread workers once set it for them all
    after = max(in_threads(1, lambda: rate(llm, ids, args.new_tokens))[0] for _ in range(2))
    print(
        f"greedy in a worker thread started after the embedder ran: {after:.1f} tok/s "
        f"({after / base:.2f}x the main thread)"
    )


def embedding(repeats: int) -> None:
    """The document embedder (torch's own ops, on libgomp) on the main thread and in a worker."""
    from ingest.embeddings import Embedder

    embedder = Embedder()
    passages = ["The keeper trims the wick at dusk and logs the wind every hour."] * 64

    def ms() -> float:
        embedder.encode(passages)
        start = time.perf_counter()
        embedder.encode(passages)
        return (time.perf_counter() - start) * 1000

    main, worker = 1e9, 1e9
    for _ in range(repeats):
        main = min(main, ms())
        worker = min(worker, in_threads(1, ms)[0])
    print(
        f"embedding 64 passages ({embedder.precision}): main thread {main:.0f} ms, "
        f"a worker thread {worker:.0f} ms ({main / worker:.2f}x the main thread's speed)"
    )


if __name__ == "__main__":
    main()
