"""The served app through `gradio_client`: public endpoints, concurrency, queue limit, uploads and
their caps."""

from __future__ import annotations

import os

import pytest
from gradio_client import Client, handle_file

from tests.ingest.pdfs import encrypted_pdf
from tests.webapp.conftest import start_app, stop_app
from webapp.chat import ChatRequest, ChatService
from webapp.models import ModelRegistry

QUEUE_SIZE = 16
QUEUE_FULL = "Queue is full! Please try again."  # what a caller gets beyond the queue (README)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    running = start_app(
        tmp_path_factory.mktemp("app"),
        SCRATCHGPT_QUEUE_SIZE=str(QUEUE_SIZE),
        SCRATCHGPT_MAX_UPLOAD_MB="1",
        SCRATCHGPT_MAX_UPLOAD_FILES="4",
        SCRATCHGPT_MAX_REQUEST_MB="2",
        SCRATCHGPT_MAX_SESSION_DOCS="3",
    )
    yield running
    stop_app(running)


def test_only_chat_upload_and_new_session_are_public(app):
    api = Client(app.url, verbose=False).view_api(return_format="dict", print_info=False)
    assert set(api["named_endpoints"]) == {"/chat", "/upload", "/new_session"}
    assert not api["unnamed_endpoints"]


def test_sixteen_concurrent_chats_answer_correctly_within_bounded_memory(app, smollm2):
    prompts = [f"What is {i} plus {i}?" for i in range(16)]
    local = ChatService(ModelRegistry("none", loader=lambda _: smollm2))
    expected = [list(local.reply(ChatRequest(p, max_new_tokens=8)))[-1].text for p in prompts]
    clients = [Client(app.url, verbose=False) for _ in prompts]
    # the model loads on first use; warmed from a session of its own, so each of the 16
    # starts without history (a session's next turn starts from its cache: near-ties may part)
    Client(app.url, verbose=False).predict("Warm up.", max_new_tokens=2, api_name="/chat")
    rss_before = app.rss_kib()
    jobs = [
        c.submit(p, max_new_tokens=8, api_name="/chat")
        for c, p in zip(clients, prompts, strict=True)
    ]
    answers = [job.result(timeout=600) for job in jobs]
    assert answers == expected  # each caller got its own answer, exactly the greedy reply
    growth_mib = (app.rss_kib() - rss_before) / 1024
    print(
        f"server RSS growth over 16 calls: {growth_mib:.0f} MiB, "
        f"peak {app.rss_kib('VmHWM') / 1024:.0f} MiB"
    )
    assert growth_mib < 150


def test_callers_beyond_the_queue_get_the_documented_message(app):
    clients = [Client(app.url, verbose=False) for _ in range(QUEUE_SIZE + 8)]
    jobs = [c.submit("Name a colour.", max_new_tokens=6, api_name="/chat") for c in clients]
    done, refused = 0, []
    for job in jobs:
        try:
            assert job.result(timeout=600).strip()
            done += 1
        except Exception as err:
            refused.append(str(err))
    assert refused and all(QUEUE_FULL in message for message in refused), refused
    assert done >= QUEUE_SIZE  # everything that fitted in the queue was answered
    # the server keeps serving once the burst is over
    assert (
        Client(app.url, verbose=False)
        .predict("Say hi.", max_new_tokens=4, api_name="/chat")
        .strip()
    )


def test_upload_endpoint_indexes_and_rejects_with_reasons(app, tmp_path):
    good = tmp_path / "notes.md"
    good.write_text("# Notes\n\nThe observatory's telescope is called Old Saturn.")
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypted_pdf("AES-256"))
    fake = tmp_path / "setup.pdf"
    fake.write_bytes(b"MZ\x90\x00\x03" + os.urandom(2000))
    big = tmp_path / "big.txt"
    big.write_text("All work and no play makes a long file. " * 40_000)  # 1.6 MB > the 1 MB limit
    client = Client(app.url, verbose=False)
    key = client.predict(api_name="/new_session")
    status, table, *_ = client.predict(
        [handle_file(p) for p in (locked, fake, big, good)], session=key, api_name="/upload"
    )
    lines = status.split("\n\n")
    assert lines[0].startswith("❌ locked.pdf:") and "password-protected" in lines[0]
    assert lines[1].startswith("❌ setup.pdf:") and "not a pdf" in lines[1].lower()
    assert lines[2].startswith("❌ big.txt:") and "over the 1 MB limit" in lines[2]
    assert lines[3].startswith("✅ Added") and "notes.md" in lines[3]
    assert [row[0] for row in table["data"]] == ["notes.md"]  # the rejected files left no trace
    answer = client.predict(
        "What is the observatory's telescope called?", template="rag", session=key, api_name="/chat"
    )
    assert "**Sources**" in answer and "notes.md, page 1" in answer
    other = Client(app.url, verbose=False)  # no session: nothing of this one's
    with pytest.raises(Exception, match="none are indexed yet"):
        other.predict(
            "What is the observatory's telescope called?", template="rag", api_name="/chat"
        )
    # uploads are read and deleted, so nothing is left to download (Gradio keeps empty temp files)
    leftovers = [p for p in (app.tmp / "gradio").rglob("*") if p.is_file() and p.stat().st_size]
    assert not leftovers, leftovers


def test_upload_caps_refuse_the_files_over_them_with_reasons_and_take_the_rest(app, tmp_path):
    def text(name: str, size: int, word: str) -> object:
        path = tmp_path / name  # its size in spaces: one chunk, quick to index
        path.write_text(f"The {word} file speaks of {word}." + " " * size + "Nothing else.\n")
        return handle_file(path)

    mb = 1024 * 1024
    batch = [
        text("a.txt", int(0.9 * mb), "apple"),
        text("b.txt", int(0.9 * mb), "birch"),
        text("c.txt", int(0.5 * mb), "cedar"),  # 2.3 MB with a and b: over the 2 MB per upload
        text("d.txt", 2000, "daisy"),
        text("e.txt", 2000, "elder"),  # the fifth file: over the 4 files per upload
    ]
    client = Client(app.url, verbose=False)
    key = client.predict(api_name="/new_session")
    status, table, *_ = client.predict(batch, session=key, api_name="/upload")
    lines = status.split("\n\n")
    assert [line[0] for line in lines] == ["✅", "✅", "❌", "✅", "❌"], status
    assert lines[2].startswith("❌ c.txt:") and "2 MB together" in lines[2]
    assert lines[4].startswith("❌ e.txt:") and "at most 4 files" in lines[4]
    assert sorted(row[0] for row in table["data"]) == ["a.txt", "b.txt", "d.txt"]
    status, table, *_ = client.predict(
        [text("f.txt", 2000, "fir")], session=key, api_name="/upload"
    )
    assert status.startswith("❌ f.txt:") and "already holds 3 documents" in status
    assert len(table["data"]) == 3


STARTUP = """
import sys
import gradio as gr

def launch(self, *args, **kwargs):  # built and about to listen: what has been imported so far
    print("torch._dynamo" in sys.modules, "sentence_transformers" in sys.modules)

gr.Blocks.launch = launch
import app
app.main()
"""


def test_the_app_listens_without_loading_what_a_first_chat_does_not_need(tmp_path):
    """torch._dynamo (~1 s) and sentence-transformers (~3 s) stay out of start-up: the embedder
    loads when a page opens or a document arrives (`bench/first_answer.py` times it)."""
    import subprocess
    import sys

    from tests.webapp.conftest import ROOT

    env = {
        **os.environ,
        "SCRATCHGPT_DATA": str(tmp_path / "chroma"),
        "SCRATCHGPT_MODELS_DIR": str(tmp_path / "models"),
    }
    done = subprocess.run(
        [sys.executable, "-c", STARTUP],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False False"
