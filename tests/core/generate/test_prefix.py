"""The prompt cache: a chat's next turn prefills only its new tokens, the same prompt again
decodes as the first time did, and the cache stays within its bytes."""

from __future__ import annotations

import threading

import pytest
import torch

from core.generate.decode import stream_tokens
from core.generate.prefix import MIN_REUSE, PromptCache
from core.generate.settings import GenerationSettings

pytestmark = pytest.mark.usefixtures("exact_prefill")  # fresh and cached runs: fp32 sums
SYSTEM = "You are a careful assistant. Answer in one or two short sentences. " * 4


def prompt_rows(model) -> tuple[list[int], object]:
    """Tokens per forward pass of `model` (the list fills as it runs), and the hook's handle."""
    rows: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[1]))
    return rows, handle


def chat(*turns: str) -> list[dict]:
    messages = [{"role": "system", "content": SYSTEM}]
    for i, text in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return messages


def greedy(llm, ids, prompts=None, n=24) -> list[int]:
    stops = llm.tokenizer.stop_token_ids
    return list(stream_tokens(llm.model, ids, max_new_tokens=n, stop_ids=stops, prompts=prompts))


def test_the_next_turn_prefills_only_its_new_tokens(smollm2):
    cache = PromptCache()
    first = smollm2.tokenizer.encode(smollm2.render(chat("Name a large planet.")))
    answer = greedy(smollm2, first, cache)
    said = smollm2.tokenizer.decode(answer)
    turn = chat("Name a large planet.", said, "And a small one?")
    second = smollm2.tokenizer.encode(smollm2.render(turn))
    rows, handle = prompt_rows(smollm2.model)
    try:
        got = greedy(smollm2, second, cache)
    finally:
        handle.remove()
    assert rows[0] <= len(second) - len(first)  # the first turn's prompt was not run again
    assert cache.reused >= len(first)
    assert got == greedy(smollm2, second)  # as a fresh prefill decodes it


def test_the_same_prompt_again_runs_no_prompt_and_decodes_the_same(smollm2):
    cache = PromptCache()
    ids = smollm2.tokenizer.encode(smollm2.render(chat("Write a haiku about rain.")))
    knobs = dict(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.2)

    def sampled() -> list[int]:
        generator = torch.Generator().manual_seed(7)
        stream = stream_tokens(
            smollm2.model, ids, max_new_tokens=20, generator=generator, prompts=cache, **knobs
        )
        return list(stream)

    want = sampled()
    rows, handle = prompt_rows(smollm2.model)
    try:
        got = sampled()
    finally:
        handle.remove()
    assert got == want and set(rows) == {1}  # kept scores: only the new tokens went through


def test_a_stopped_reply_is_kept_and_prefixes_shorter_than_the_minimum_are_not(smollm2):
    cache = PromptCache()
    ids = smollm2.tokenizer.encode(smollm2.render(chat("Count from one to twenty.")))
    stream = stream_tokens(smollm2.model, ids, max_new_tokens=40, prompts=cache)
    made = [next(stream) for _ in range(5)]
    stream.close()  # the user pressed stop
    assert len(cache) == 1
    kv, held, scores = cache.take(smollm2.model, ids + made[:4] + [7, 8], 200)
    assert held == len(ids) + 4 and scores is None and kv.length == held and kv.max_len >= 200
    short = [*ids[: MIN_REUSE - 1], 5]
    cache.put(ids[: MIN_REUSE - 1], smollm2.model.new_cache(1, 40), {})  # holds no scores
    assert cache.take(smollm2.model, short, 40)[1] == 0


def test_entries_stay_within_the_byte_budget_and_serve_one_reply_at_a_time(smollm2):
    one = smollm2.model.new_cache(1, 100)
    one.length = 20
    size = one.k.nbytes + one.v.nbytes
    cache = PromptCache(max_bytes=int(2.5 * size))
    for start in range(3):
        kv = smollm2.model.new_cache(1, 100)
        kv.length = 20
        cache.put(list(range(start, start + 20)), kv, {})
    assert len(cache) == 2  # the oldest went
    assert cache.take(smollm2.model, [*range(20), 1], 100)[1] == 0
    taken: list[int] = []
    ids = [*range(2, 22), 3]

    def take() -> None:
        taken.append(cache.take(smollm2.model, ids, 100)[1])

    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == [0, 20]  # the entry went to one of them only
    huge = PromptCache(max_bytes=size // 2)
    huge.put(list(range(20)), one, {})
    assert len(huge) == 0  # one entry over the budget is not kept


def test_the_engine_reuses_a_conversations_own_turns_only(smollm2):
    """A conversation's next turn starts from its own cache, never from another conversation's
    (whose answers would then depend on it, and whose prompts a timer could probe); replies
    without a conversation are not cached."""
    settings = GenerationSettings(max_new_tokens=12)
    messages = chat("What colour is the sky?")
    smollm2.prompts.clear()
    reply = "".join(p.text for p in smollm2.stream(messages, settings, conversation="alice"))
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}]
    before = smollm2.prompts.reused
    "".join(p.text for p in smollm2.stream(messages, settings, conversation="bob"))
    "".join(p.text for p in smollm2.stream(messages, settings))
    assert smollm2.prompts.reused == before and len(smollm2.prompts) == 2  # alice's, bob's
    "".join(p.text for p in smollm2.stream(messages, settings, conversation="alice"))
    assert smollm2.prompts.reused - before >= len(smollm2.tokenizer.encode(SYSTEM))


@pytest.mark.parametrize("value", ["lots", "-5", "inf", "nan"])
def test_a_bad_cache_size_is_refused_with_what_to_give(monkeypatch, value):
    monkeypatch.setenv("SCRATCHGPT_PROMPT_CACHE_MB", value)
    with pytest.raises(ValueError, match="not a size in megabytes; give a number such as 64"):
        PromptCache()
    monkeypatch.setenv("SCRATCHGPT_PROMPT_CACHE_MB", "0")
    assert PromptCache().max_bytes == 0
