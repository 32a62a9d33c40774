"""`SCRATCHGPT_EMBEDDER=ours`: the app's documents are embedded by our own encoder (core.sentence,
the packaged MiniLM weights) end to end through the real Library; an unknown value stops the app
with one line naming the choices. The embedder loads on first use or when a page opens, not
before the app listens."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from core.sentence import SentenceEncoder
from ingest import embeddings
from tests.webapp.conftest import ROOT
from webapp.documents import Library

TEXT = (
    b"The lighthouse keeper trims the wick at dusk and logs the wind.\n\n"
    b"Bread is baked before dawn in the stone oven by the harbour."
)


@pytest.fixture
def ours(monkeypatch):
    monkeypatch.setitem(embeddings.EMBEDDERS, "ours", SentenceEncoder)
    monkeypatch.setenv("SCRATCHGPT_EMBEDDER", "ours")


def test_documents_are_embedded_and_found_with_our_encoder(tmp_path, ours):
    library = Library(path=tmp_path / "chroma")
    try:
        assert isinstance(library.embedder.load(), SentenceEncoder)
        key = "a-session"
        [result] = library.add_files(key, [("notes.txt", TEXT)])
        assert result.ok, result.message
        [hit] = library.search(key, "When does the keeper trim the wick?", k=1)
        assert "lighthouse keeper" in hit.text
        query = library.embedder.encode(["lighthouse wick"])
        assert query.shape == (1, 384) and np.isclose(np.linalg.norm(query), 1.0, atol=1e-5)
    finally:
        library.close()


def test_an_unknown_embedder_stops_the_app_with_one_line(tmp_path):
    env = {**os.environ, "SCRATCHGPT_EMBEDDER": "bogus", "SCRATCHGPT_DATA": str(tmp_path / "d")}
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert done.stderr.strip() == (
        "app.py: SCRATCHGPT_EMBEDDER='bogus': must be one of library, ours."
    )


LAZY = """
import sys, time
from webapp.documents import Library
from webapp.chat import ChatService
from webapp.handlers import Handlers
from webapp.models import ModelRegistry
library = Library(path=sys.argv[1])
assert "sentence_transformers" not in sys.modules, "the embedder loaded before it was needed"
handlers = Handlers(ChatService(ModelRegistry(sys.argv[1] + "-models"), library))
key, *_ = handlers.on_load("")  # a page opens: the embedder starts loading in the background
assert handlers.keys.verify(key)
deadline = time.time() + 120
while "sentence_transformers" not in sys.modules or library.embedder._loaded is None:
    assert time.time() < deadline, "opening a page never loaded the embedder"
    time.sleep(0.05)
[result] = library.add_files("k", [("notes.txt", sys.argv[2].encode())])
assert result.ok, result.message
[hit] = library.search("k", "When does the keeper trim the wick?", k=1)
print(hit.text)
"""


def test_the_embedder_loads_when_a_page_opens_not_at_start(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", LAZY, str(tmp_path / "chroma"), TEXT.decode()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "lighthouse keeper trims the wick" in done.stdout
