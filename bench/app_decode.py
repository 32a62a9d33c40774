"""Decoding speed as a user meets it: replies streamed by a running `app.py` through its /chat API.

    .venv/bin/python bench/app_decode.py [--answers 3] [--new-tokens 256]

Starts the app (its own data and models folders, replies capped at --new-tokens), asks for a long
answer --answers times, and prints each one's tokens, time to the first streamed piece and
tokens/s after it. Compare with bench/threads.py (the same model outside the server).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradio_client import Client

from core.generate.engine import LLM
from tests.webapp.conftest import start_app, stop_app

QUESTION = "Write a long story about the sea and a lighthouse keeper."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args()
    tokenizer = LLM.load("default").tokenizer
    app = start_app(Path(tempfile.mkdtemp()), SCRATCHGPT_MAX_NEW_TOKENS=str(args.new_tokens))
    try:
        client = Client(app.url, verbose=False)
        for i in range(args.answers):
            job = client.submit(QUESTION, api_name="/chat")
            start, first = time.perf_counter(), None
            for _ in job:
                first = first if first is not None else time.perf_counter() - start
            total = time.perf_counter() - start
            n = len(tokenizer.encode(str(job.outputs()[-1])))
            rate = n / (total - (first or 0.0))
            print(f"answer {i + 1}: {n} tokens, first piece {first:.2f} s, {rate:.1f} tok/s after")
    finally:
        stop_app(app)


if __name__ == "__main__":
    main()
