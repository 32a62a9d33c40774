"""The real app (`python app.py`, what `make run` starts) on a free port, and Chromium for the
browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    url: str
    proc: subprocess.Popen
    log: Path
    tmp: Path

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The server's resident memory (VmRSS) or its peak so far (VmHWM), in KiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not found")


def start_app(tmp: Path, **env: str) -> App:
    port = free_port()
    settings = {
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "SCRATCHGPT_DATA": str(tmp / "chroma"),
        "SCRATCHGPT_MODELS_DIR": str(tmp / "models"),
        "SCRATCHGPT_MAX_NEW_TOKENS": "24",
        **env,
    }
    log = tmp / "app.log"
    proc = subprocess.Popen(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env={**os.environ, **settings},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return App(f"http://127.0.0.1:{port}", proc, log, tmp)
        time.sleep(0.5)
    proc.kill()
    pytest.fail(f"app.py did not listen within 180 s:\n{log.read_text()[-3000:]}")


def stop_app(app: App) -> None:
    app.proc.terminate()
    try:
        app.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        app.proc.kill()


def tiny_checkpoint(directory: Path) -> Path:
    """A small random model saved as our checkpoint (as `make train-demo` leaves under models/)."""
    from core import checkpoint
    from core.config import ModelConfig
    from core.model import Decoder
    from core.tokenizer import Tokenizer

    tokenizer = Tokenizer.train(
        ["the quick brown fox jumps over the lazy dog " * 40],
        300,
        special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    )
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=32, block_size=256
    )
    return checkpoint.save(Decoder(config), directory, tokenizer)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """One app server per test module, with one extra checkpoint under its models/."""
    tmp = tmp_path_factory.mktemp("app")
    tiny_checkpoint(tmp / "models" / "tiny-demo")
    running = start_app(tmp)
    yield running
    stop_app(running)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium through Python playwright; skips with the reason only outside CI."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: `apt-get install -y chromium` (make test does it as root)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


# -- the in-process chat service of test_chat*.py: real model, embedder and Chroma ----------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def embedder():
    from ingest import Embedder

    return Embedder(precision="fp32")


@pytest.fixture(scope="module")
def registry(smollm2):
    from webapp.models import ModelRegistry

    return ModelRegistry("no-models-here", loader=lambda source: smollm2)


@pytest.fixture
def library(tmp_path, embedder):
    from webapp.documents import Library

    lib = Library(path=tmp_path / "chroma", embedder=embedder, clock=Clock())
    yield lib
    lib.close()


@pytest.fixture
def service(registry, library):
    from webapp.chat import ChatLimits, ChatService

    return ChatService(
        registry, library, limits=ChatLimits(max_new_tokens=12, max_prompt_tokens=600)
    )
