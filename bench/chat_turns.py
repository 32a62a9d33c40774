"""Time to first token of a chat's second turn: ours with the prompt cache (the app's engine
keeps the last replies' KV caches, `core.generate.prefix`), ours prefilling it all again, and
transformers (bf16, which re-reads the whole conversation each turn) on the same token ids.

    .venv/bin/python bench/chat_turns.py [--history 100,700] [--repeats 3]

For each history size (system prompt tokens, roughly), turn one is answered (64 greedy tokens),
then the second turn (turn one, its answer and a new question) is timed to its first token,
interleaved, best of --repeats, with the ratio fresh / cached.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.decode import FirstToken
from bench.forward import load_reference
from core.generate.decode import stream_tokens
from core.generate.engine import LLM
from core.generate.prefix import PromptCache

SENTENCE = "You are a helpful assistant for a team that writes plotting scripts; answer briefly. "


def first_token(llm: LLM, ids: list[int], prompts: PromptCache | None) -> tuple[float, list[int]]:
    stops = llm.tokenizer.stop_token_ids
    start = time.perf_counter()
    stream = stream_tokens(llm.model, ids, max_new_tokens=64, stop_ids=stops, prompts=prompts)
    out = [next(stream)]
    elapsed = time.perf_counter() - start
    out += list(stream)
    return elapsed, out


def theirs_first_token(model, ids: list[int]) -> float:
    streamer = FirstToken()
    start = time.perf_counter()
    model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False, streamer=streamer)
    return streamer.first - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", default="100,700", help="system prompt sizes, in tokens")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm = LLM.load("default")
    reference = load_reference(torch.bfloat16)
    print(f"ours: {llm.description}; transformers bf16 on the same GGUF; best of {args.repeats}")
    columns = ("turn 2 tokens", "reused", "ours cached", "ours fresh", "fresh / cached", "hf bf16")
    print("| history | " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|")
    for size in (int(s) for s in args.history.split(",")):
        system = SENTENCE * max(1, size // len(llm.tokenizer.encode(SENTENCE)))
        turn = [{"role": "system", "content": system}, {"role": "user", "content": "Hello!"}]
        best = {"cached": 1e9, "fresh": 1e9, "hf": 1e9}
        reused = 0
        for _ in range(args.repeats):
            prompts = PromptCache()
            _, answer = first_token(llm, llm.tokenizer.encode(llm.render(turn)), prompts)
            said = llm.tokenizer.decode(answer)
            second = [*turn, {"role": "assistant", "content": said}]
            second.append({"role": "user", "content": "How do I put two plots side by side?"})
            ids = llm.tokenizer.encode(llm.render(second))
            before = prompts.reused
            best["cached"] = min(best["cached"], first_token(llm, ids, prompts)[0])
            reused = prompts.reused - before
            best["fresh"] = min(best["fresh"], first_token(llm, ids, None)[0])
            with torch.inference_mode():
                best["hf"] = min(best["hf"], theirs_first_token(reference, ids))
        print(
            f"| {size} | {len(ids)} | {reused} | {best['cached']:.3f} s | {best['fresh']:.3f} s "
            f"| {best['fresh'] / best['cached']:.1f}x | {best['hf']:.3f} s |"
        )


if __name__ == "__main__":
    main()
