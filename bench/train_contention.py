"""Chat speed while a training job runs: greedy tokens/s of the default chat model (as the server
decodes it) with no job, then while a tiny-preset pre-training job from `webapp.jobs` trains
(its own niced, thread-capped process), then with no job again; one process, interleaved rounds.
The issue's bar: with a job, at least 50% of the speed without one.

    .venv/bin/python bench/train_contention.py [--rounds 3] [--new-tokens 48]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.generate.engine import LLM
from webapp.jobs import JobRunner, owner_hash
from webapp.train_inputs import PRESETS, JobLimits

PROMPT = [{"role": "user", "content": "Tell me about the history of the printing press."}]


def chat_rate(llm: LLM, new_tokens: int) -> float:
    """Tokens/s of one greedy reply of exactly `new_tokens` tokens (EOS ignored)."""
    stream = llm.stream(PROMPT, max_new_tokens=new_tokens, stop=())
    start, pieces = time.perf_counter(), 0
    for _ in stream:
        pieces += 1
    return pieces / (time.perf_counter() - start)


def corpus() -> str:
    from recipes.corpora import play_keys, play_path

    return "\n\n".join(play_path(k).read_text("utf-8", "replace") for k in play_keys()[:2])[
        : 200 * 1024
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=48)
    args = parser.parse_args()
    llm = LLM.load("default")
    chat_rate(llm, 8)  # warm up
    tmp = Path(tempfile.mkdtemp(prefix="contention-"))
    runner = JobRunner(tmp / "models", tmp / "jobs", JobLimits())
    owner = owner_hash("bench")
    alone, beside = [], []
    for round_ in range(args.rounds):
        alone.append(chat_rate(llm, args.new_tokens))
        settings = {**PRESETS["tiny"], "max_steps": 100_000, "data": ["corpus.txt"]}
        extra = {"max_steps": 100_000, "launch_step": 0}
        job = runner.start(
            owner, "pretrain", f"r{round_}", settings, {"corpus.txt": corpus()}, extra
        )
        while not job.events():  # the tokenizer is trained first: wait for real steps
            time.sleep(0.5)
        beside.append(chat_rate(llm, args.new_tokens))
        steps = len([e for e in job.events() if "loss" in e])
        runner.kill(job)
        while runner.current().active:
            time.sleep(0.2)
        print(
            f"round {round_ + 1}: chat alone {alone[-1]:.1f} tok/s, beside a training job "
            f"{beside[-1]:.1f} tok/s (job at step {steps})",
            flush=True,
        )
    a, b = statistics.median(alone), statistics.median(beside)
    threads = JobLimits().threads
    print(f"chat tokens/s, median of {args.rounds}: no job {a:.1f}, job training {b:.1f}")
    print(f"ratio {b / a:.2f} (job: {threads} thread, nice {JobLimits().nice}; bar >= 0.50)")


if __name__ == "__main__":
    main()
