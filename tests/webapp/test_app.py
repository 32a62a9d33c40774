"""The minimal chat: ChatService on the real default model, and app.py served over HTTP."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webapp.chat import ChatInputError, ChatService, Limits

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def service():
    return ChatService("default", limits=Limits(max_new_tokens=12))


def test_reply_streams_a_growing_answer(service):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
    ]
    states = list(service.reply("What is the capital of France?", history, max_new_tokens=500))
    assert len(states) > 1
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(states))
    assert "Paris" in states[-1]
    # the server cap (12 tokens) wins over the client's 500
    assert len(service.llm.tokenizer.encode(states[-1])) <= 12


def test_history_is_rendered_with_the_chat_template(service):
    messages = service.messages("And Spain?", [{"role": "user", "content": "Capital of France?"},
                                               {"role": "assistant", "content": "Paris."}], "Be brief.")  # fmt: skip
    prompt = service.llm.render(messages)
    assert prompt.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert prompt.endswith("<|im_start|>user\nAnd Spain?<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("message", "kwargs", "error"), [
    ("   ", {}, "message is empty"),
    ("x" * 9000, {}, "limit is 8000"),
    ("hi", {"temperature": -1.0}, "temperature must be >= 0"),
])  # fmt: skip
def test_bad_requests_are_refused_with_a_reason(service, message, kwargs, error):
    with pytest.raises(ChatInputError, match=error):
        list(service.reply(message, [], **kwargs))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_serves_chat_over_http(tmp_path):
    """`python app.py` (what `make run` starts) answers through the Gradio API."""
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "SCRATCHGPT_MAX_NEW_TOKENS": "16"}
    log = (tmp_path / "app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert proc.poll() is None, (tmp_path / "app.log").read_text()
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("app.py did not start listening within 120 s")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        answer = client.predict("Say hello.", "You are terse.", 0.0, 16, api_name="/chat")
        assert isinstance(answer, str) and answer.strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
