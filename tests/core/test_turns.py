"""Replies sharing one model take turns: first come first served, re-entrant, and two threads
decoding at once (greedy beside beam, attention maps beside a reply) get exactly what each gets
alone, the shorter one finishing while the longer one still runs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from core import kernels
from core.attention_maps import attention_maps
from core.config import ModelConfig
from core.generate.decode import run_beam_search, stream_tokens
from core.model import Decoder
from core.turns import Turns


def wait_until(check, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.001)


def test_waiters_are_served_in_the_order_they_came():
    turns, order = Turns(), []
    turns.acquire()

    def take(i: int) -> None:
        with turns:
            order.append(i)

    threads = []
    for i in range(6):
        threads.append(threading.Thread(target=take, args=(i,)))
        threads[-1].start()
        wait_until(lambda n=i + 1: turns.waiting() == n)  # queued before the next one comes
    turns.release()
    for t in threads:
        t.join(5)
    assert order == list(range(6))


def test_a_holder_may_take_it_again_and_only_the_holder_releases():
    turns = Turns()
    with turns, turns:
        done = threading.Event()
        other = threading.Thread(target=lambda: (turns.acquire(), turns.release(), done.set()))
        other.start()
        wait_until(lambda: turns.waiting() == 1)
        assert not done.is_set()  # held twice, released once (inner `with` left): still held
    other.join(5)
    assert done.is_set()
    with pytest.raises(RuntimeError, match="does not hold"):
        turns.release()


def test_a_waiter_that_gives_up_does_not_block_the_ones_behind_it():
    turns, order = Turns(), []
    quitter = threading.Event()
    real_wait = turns._changed.wait

    def wait(*args):  # the quitter's wait is interrupted, as KeyboardInterrupt would
        if threading.current_thread().name == "quitter":
            quitter.set()
            raise KeyboardInterrupt
        return real_wait(*args)

    turns._changed.wait = wait
    turns.acquire()
    failed = []

    def quit_waiting() -> None:
        try:
            turns.acquire()
        except KeyboardInterrupt:
            failed.append(True)

    q = threading.Thread(target=quit_waiting, name="quitter")
    q.start()
    q.join(5)
    assert quitter.is_set() and failed
    after = threading.Thread(target=lambda: (turns.acquire(), order.append("after")))
    after.start()
    wait_until(lambda: turns.waiting() == 1)
    turns.release()
    after.join(5)
    assert order == ["after"]  # the quitter's ticket was skipped


@torch.inference_mode()
def test_two_replies_at_once_take_turns_and_match_their_solo_runs(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer
    layout_before = kernels.layout(model)
    long_ids = tok.encode("Write a long story about the sea and a lighthouse keeper.")
    short_ids = tok.encode("The capital of France is")
    long_solo = list(stream_tokens(model, long_ids, max_new_tokens=160, stop_ids=set()))
    beam = dict(num_beams=3, max_new_tokens=20, eos_ids=sorted(tok.stop_token_ids))
    short_solo = run_beam_search(model, short_ids, **beam).best

    long_tokens: list[int] = []
    when_short_ended: list[int] = []

    def long_reply() -> None:
        with torch.inference_mode():
            for token in stream_tokens(model, long_ids, max_new_tokens=160, stop_ids=set()):
                long_tokens.append(token)

    def short_reply() -> None:
        with torch.inference_mode(), kernels.batched(model):  # as the engine runs a beam reply
            when_short_ended.append(run_beam_search(model, short_ids, **beam).best)
        when_short_ended.append(len(long_tokens))

    first = threading.Thread(target=long_reply)
    first.start()
    wait_until(lambda: len(long_tokens) >= 2)
    second = threading.Thread(target=short_reply)
    second.start()
    second.join(60)
    first.join(60)
    short_best, long_so_far = when_short_ended
    assert long_so_far < 160  # the short reply did not wait for the long one to end
    assert short_best == short_solo
    assert long_tokens == long_solo
    assert kernels.layout(model) == layout_before  # the beam's switch undone once it ended


@torch.inference_mode()
def test_attention_maps_beside_a_reply_see_only_their_own_pass():
    # a plain model: every step runs the modules, so the maps' hooks would fire on the reply's
    # steps too if the maps did not hold the model's turn (the prepared model fuses its steps)
    torch.manual_seed(0)
    config = ModelConfig.preset(
        "llama", vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, ffn_hidden=48
    )
    model = Decoder(config).eval()
    ids = list(range(3, 40))
    solo = attention_maps(model, ids, window=8)
    running = threading.Event()
    stop = threading.Event()
    failures: list[BaseException] = []

    def reply() -> None:
        try:
            with torch.inference_mode():
                for _ in stream_tokens(model, [5, 6, 7], max_new_tokens=500):
                    running.set()
                    if stop.is_set():
                        return
        except BaseException as e:  # e.g. the maps' hooks firing on this reply's step
            failures.append(e)
            running.set()

    t = threading.Thread(target=reply)
    t.start()
    running.wait(10)
    try:
        for _ in range(5):
            beside = attention_maps(model, ids, window=8)
            assert torch.equal(beside.weights, solo.weights)
    finally:
        stop.set()
        t.join(30)
    assert not failures  # the reply beside them ran undisturbed
