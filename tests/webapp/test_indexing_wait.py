"""A RAG question asked while its own upload is still indexing never holds the model slot: the
page waits before taking it, `/chat` is refused after a short wait and says what is indexing.

The app runs in-process so the test can hold indexing at a gate for as long as it needs."""

from __future__ import annotations

import threading
import time

import pytest
from gradio_client import Client, handle_file

from ingest import Embedder
from tests.webapp.conftest import free_port
from webapp.chat import ChatLimits, ChatService
from webapp.documents import Library
from webapp.models import ModelRegistry
from webapp.ui import build_demo

# Gradio's queue, in this process, warns about pandas options it uses
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")

MARKER = "GATED-LEDGER"
TIMEOUT_MS = 120_000


class GatedEmbedder:
    """The real embedder, which stops at a gate before embedding chunks that hold MARKER."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.open, self.waiting = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, texts, *args, **kwargs):
        if any(MARKER in text for text in texts):
            self.waiting.set()
            assert self.open.wait(120), "the test never opened the gate"
        return self.inner.encode(texts, *args, **kwargs)

    def hold(self) -> None:
        self.open.clear()
        self.waiting.clear()


@pytest.fixture(scope="module")
def gated(smollm2, tmp_path_factory):
    """(url, gate): the app with one model slot and a gated embedder."""
    tmp = tmp_path_factory.mktemp("gated")
    gate = GatedEmbedder(Embedder(precision="fp32"))
    library = Library(path=tmp / "chroma", embedder=gate)
    service = ChatService(
        ModelRegistry(tmp / "models", loader=lambda source: smollm2),
        library,
        limits=ChatLimits(max_new_tokens=8, index_wait_in_slot_s=1.0),
    )
    demo = build_demo(service)
    demo.queue(default_concurrency_limit=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}", gate
    gate.open.set()
    demo.close()
    library.close()


def test_chat_api_during_its_own_upload_is_refused_quickly_and_the_slot_stays_free(gated, tmp_path):
    url, gate = gated
    gate.hold()
    slow = tmp_path / "slow.txt"
    slow.write_text(f"The {MARKER} says the tide turns at four in the afternoon.")
    owner = Client(url, verbose=False)
    key = owner.predict(api_name="/new_session")
    upload = owner.submit([handle_file(slow)], session=key, api_name="/upload")
    assert gate.waiting.wait(60), "the upload never reached the embedder"
    question = owner.submit(
        "When does the tide turn?", template="rag", session=key, api_name="/chat"
    )
    other = Client(url, verbose=False).submit("Say hi.", max_new_tokens=4, api_name="/chat")
    began = time.monotonic()
    with pytest.raises(Exception, match="Still indexing 'slow.txt'; ask again in a moment"):
        question.result(timeout=60)
    assert other.result(timeout=60).strip()  # answered while the upload is held
    assert time.monotonic() - began < 30 and not upload.done()
    gate.open.set()
    status, *_ = upload.result(timeout=120)
    assert "Added 'slow.txt'" in status
    answer = owner.predict(
        "When does the tide turn?", template="rag", session=key, api_name="/chat"
    )
    assert "slow.txt, page 1" in answer


def test_in_the_page_a_rag_question_waits_for_its_upload_outside_the_model_slot(
    gated, browser, tmp_path
):
    url, gate = gated
    gate.hold()
    slow = tmp_path / "harbour.txt"
    slow.write_text(f"The {MARKER} of the harbour says the ferry leaves at noon.")
    contexts = [browser.new_context(), browser.new_context()]
    try:
        page, other = (c.new_page() for c in contexts)
        for p in (page, other):
            p.set_default_timeout(TIMEOUT_MS)
            p.goto(url)
            p.wait_for_selector("#message textarea")
        page.get_by_role("tab", name="Documents").click()
        page.locator("#upload input[type=file]").set_input_files([str(slow)])
        assert gate.waiting.wait(60), "the upload never reached the embedder"
        page.get_by_role("tab", name="Prompt").click()
        page.locator("#template label", has_text="rag").first.click()
        page.locator("#message textarea").fill("When does the ferry leave?")
        page.locator("#send").click()
        page.wait_for_function(
            "document.querySelector('#notice').innerText.includes("
            "'Waiting for harbour.txt to finish indexing')"
        )
        other.locator("#message textarea").fill("Say hi.")
        other.locator("#send").click()
        other.wait_for_function(  # the one model slot is free for another page meanwhile
            "document.querySelector('#notice').innerText.includes('Answer 1 finished')"
        )
        assert not gate.open.is_set()
        assert "Waiting for harbour.txt" in page.locator("#notice").inner_text()
        gate.open.set()
        page.wait_for_function(
            "document.querySelector('#notice').innerText.includes('Answer 1 finished')"
        )
        answer = page.locator('#chatbot [data-testid="bot"]').first.inner_text()
        assert "harbour.txt, page 1" in answer
    finally:
        for context in contexts:
            context.close()
