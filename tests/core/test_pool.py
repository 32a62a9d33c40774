"""The kernels' thread pool (core/kernels/pool.c): calls from several threads at once and from a
forked child give exactly the single-caller results, and a reply decoded in a worker thread reads
the same tokens as one on the main thread (bench/threads.py times them)."""

from __future__ import annotations

import multiprocessing
import threading

import torch

from core.generate.decode import stream_tokens
from core.kernels import ops
from tests.core.test_kernels import _kernel_required


def _product(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, w = torch.randn(1, 3, 333, generator=g), torch.randn(1029, 333, generator=g)
    with torch.inference_mode():
        return x, w, ops.linear(x, w, None)


def test_calls_from_many_threads_at_once_equal_the_single_callers():
    _kernel_required()
    cases = [_product(seed) for seed in range(4)]
    wrong: list[int] = []

    def hammer(i: int) -> None:
        x, w, expected = cases[i]
        with torch.inference_mode():
            for _ in range(200):
                if not torch.equal(ops.linear(x, w, None), expected):
                    wrong.append(i)
                    return

    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads) and wrong == []


def _child(queue) -> None:
    x, w, _ = _product(7)
    with torch.inference_mode():
        queue.put(ops.linear(x, w, None).tolist())  # plain lists: tensors would go by socket


def test_a_forked_child_gets_a_pool_of_its_own():
    _kernel_required()
    *_, expected = _product(7)  # the parent's pool has started its workers
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    got = queue.get(timeout=60)  # a child waiting on the parent's (absent) workers would hang
    child.join(60)
    assert child.exitcode == 0 and got == expected.tolist()


@torch.inference_mode()
def test_a_reply_in_a_worker_thread_reads_the_same_tokens(smollm2):
    ids = smollm2.tokenizer.encode("The lighthouse keeper climbed the stairs and")
    on_main = list(stream_tokens(smollm2.model, ids, max_new_tokens=24, stop_ids=set()))
    got: list[int] = []

    def reply() -> None:
        with torch.inference_mode():
            got.extend(stream_tokens(smollm2.model, ids, max_new_tokens=24, stop_ids=set()))

    t = threading.Thread(target=reply)
    t.start()
    t.join(120)
    assert got == on_main
