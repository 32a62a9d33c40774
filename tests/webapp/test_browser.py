"""The app in Chromium (Python playwright): upload, cited RAG answers, decoding modes, isolation,
XSS."""

from __future__ import annotations

import os
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.ingest.pdfs import encrypted_pdf, text_pdf
from tests.webapp.conftest import ARTIFACTS

TIMEOUT_MS = 120_000


class Session:
    """One browser context on the app, recording console output, dialogs and upload paths."""

    def __init__(self, browser, url: str) -> None:
        self.url = url
        self.context = browser.new_context(viewport={"width": 1400, "height": 1100})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.console: list[str] = []
        self.dialogs: list[str] = []
        self.upload_responses: list = []
        self.page.on("console", lambda msg: self.console.append(msg.text))
        self.page.on("dialog", self._dialog)
        self.page.on("response", self._response)
        self.page.goto(url)
        self.page.wait_for_load_state("load")
        self.page.wait_for_selector("#message textarea")
        self.answers = 0

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _response(self, response) -> None:
        if urlparse(response.url).path == "/gradio_api/upload" and response.ok:
            self.upload_responses.append(response)  # read later: not inside the event callback

    @property
    def uploaded(self) -> list[str]:
        """Server paths the browser's uploads were stored under."""
        return [str(p) for r in self.upload_responses for p in r.json()]

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name, exact=True).click()

    def choose(self, radio: str, label: str) -> None:
        self.page.locator(f"#{radio} label", has_text=label).first.click()

    def pick_model(self, label: str) -> None:
        box = self.page.locator("#model input")
        box.click()
        box.fill(label)  # filters the list down to this entry
        self.page.get_by_role("option", name=label).click()
        self.page.wait_for_function(f"document.querySelector('#model input').value === {label!r}")
        box.blur()

    def set_number(self, elem_id: str, value: float) -> None:
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")

    def upload(self, *paths: Path) -> str:
        self.tab("Documents")
        status = self.page.locator("#upload-status [data-testid=markdown]")
        self.page.locator("#upload input[type=file]").set_input_files([str(p) for p in paths])
        deadline = time.time() + TIMEOUT_MS / 1000
        while time.time() < deadline:
            text = status.inner_text() if status.count() else ""
            if text.count("✅") + text.count("❌") >= len(paths):  # one line per file
                return text
            time.sleep(0.2)
        raise AssertionError("the upload status never appeared")

    def ask(self, question: str) -> tuple[str, list[str]]:
        """Send a message; return the final answer and every distinct state seen while streaming."""
        self.answers += 1
        self.page.locator("#message textarea").fill(question)
        self.page.locator("#send").click()
        bots, notice = (
            self.page.locator('#chatbot [data-testid="bot"]'),
            self.page.locator("#notice"),
        )
        seen: list[str] = []
        deadline = time.time() + TIMEOUT_MS / 1000
        while time.time() < deadline:
            if bots.count() >= self.answers:
                text = bots.nth(self.answers - 1).inner_text()
                if text and (not seen or seen[-1] != text):
                    seen.append(text)
            if f"Answer {self.answers} finished" in notice.inner_text():
                return bots.nth(self.answers - 1).inner_text(), seen
            time.sleep(0.05)
        raise AssertionError(f"answer {self.answers} did not finish; last states {seen[-3:]}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser, app):
    opened: list[Session] = []

    def open_session() -> Session:
        opened.append(Session(browser, app.url))
        return opened[-1]

    yield open_session
    for s in opened:
        s.close()


def test_upload_then_cited_rag_answer_then_beam_and_sampling(session, tmp_path):
    pdf = tmp_path / "mill-notes.pdf"
    pdf.write_bytes(
        text_pdf(
            [
                "Page one is about the weather in spring and the price of flour.",
                "The vault under the old mill opens with the password PERIWINKLE.",
                "Page three lists the names of the mill's cats.",
            ]
        )
    )
    s = session()
    status = s.upload(pdf)
    assert "Added 'mill-notes.pdf': 3 pages" in status
    assert "mill-notes.pdf" in s.page.locator("#documents").inner_text()

    s.tab("Prompt")
    s.choose("template", "rag")
    answer, states = s.ask("What password opens the vault under the old mill?")
    assert "Sources" in answer and "mill-notes.pdf, page 2" in answer.split("Sources")[1]
    assert "[1]" in answer.split("Sources")[1]
    bodies = list(dict.fromkeys(t.split("Sources")[0].strip() for t in states))
    streamed = [b for b in bodies if b and b != "…"]
    assert len(streamed) >= 2, states  # the answer grew in place, token by token
    assert all(streamed[-1].startswith(b) for b in streamed)
    # the evidence: quoted under the answer, and highlighted in its source
    quote = "The vault under the old mill opens with the password PERIWINKLE."
    assert f'"{quote}" [1] (mill-notes.pdf, page 2)' in answer
    assert quote in s.page.locator("#chatbot mark").all_inner_texts()
    ARTIFACTS.mkdir(exist_ok=True)
    s.page.screenshot(path=str(ARTIFACTS / "browser-rag-evidence.png"), full_page=True)

    s.page.locator("#show-prompt").click()
    s.page.wait_for_function("document.querySelector('#prompt-info').innerText.includes('tokens')")
    assert "[1] (mill-notes.pdf, page 2)" in s.page.locator("#prompt-view").inner_text()

    s.tab("Decoding")
    temperature = s.page.locator("#temperature input[type=range]")
    beams = s.page.locator("#beams input[type=range]")
    assert temperature.is_disabled() and beams.is_disabled()  # greedy reads neither
    s.choose("mode", "Beam search")
    s.page.wait_for_function("!document.querySelector('#beams input[type=range]').disabled")
    assert temperature.is_disabled()
    s.set_number("beams", 3)
    beam_answer, _ = s.ask("In one sentence, what is under the old mill?")
    assert beam_answer.strip() and "Sources" in beam_answer

    s.choose("mode", "Sampling")
    s.page.wait_for_function("!document.querySelector('#temperature input[type=range]').disabled")
    assert beams.is_disabled()
    s.set_number("temperature", 0.9)
    s.set_number("top-k", 20)
    s.set_number("top-p", 0.8)
    s.set_number("seed", 7)
    sampled, _ = s.ask("Tell me about the mill.")
    assert sampled.strip()
    ARTIFACTS.mkdir(exist_ok=True)
    s.page.screenshot(path=str(ARTIFACTS / "browser-rag.png"), full_page=True)
    assert not s.dialogs


def test_a_second_browser_session_cannot_reach_the_first_ones_document(session, app, tmp_path):
    canary = "ZEBRA-CANARY-5521"
    secret = tmp_path / "private-notes.txt"
    secret.write_text(f"The canary token of the first session is {canary}.")
    first = session()
    assert "Added" in first.upload(secret)
    assert first.uploaded, "the upload's server path was not seen"

    second = session()
    second.tab("Documents")
    assert "private-notes.txt" not in second.page.locator("#documents").inner_text()
    public = tmp_path / "public-notes.txt"
    public.write_text("The second session's notes are about gardening and tomatoes.")
    assert "Added" in second.upload(public)
    second.tab("Prompt")
    second.choose("template", "rag")
    answer, states = second.ask("What is the canary token of the first session?")
    assert canary not in answer and "private-notes.txt" not in answer
    assert not any(canary in state for state in states)
    for path in first.uploaded:  # the upload's own URL serves nothing: the file was consumed
        response = second.page.request.get(f"{app.url}/gradio_api/file={path}")
        assert response.status >= 400 or canary not in response.text()
    assert canary not in second.page.content()

    first.page.locator("#delete").click()  # the owner deletes it: gone from the list
    first.page.wait_for_function(
        "document.querySelector('#upload-status').innerText.includes('Deleted')"
    )
    assert "private-notes.txt" not in first.page.locator("#documents").inner_text()


def test_rejected_uploads_show_their_reason_and_the_app_keeps_working(session, tmp_path):
    locked = tmp_path / "locked.pdf"
    locked.write_bytes(encrypted_pdf("RC4-128"))
    fake = tmp_path / "installer.pdf"
    fake.write_bytes(b"MZ\x90\x00\x03\x00\x00\x00" + os.urandom(4000))
    s = session()
    status = s.upload(locked, fake)
    assert "locked.pdf: 'locked.pdf' is password-protected" in status
    assert "installer.pdf:" in status and "not a PDF" in status
    assert "locked.pdf" not in s.page.locator("#documents").inner_text()
    s.tab("Prompt")
    s.choose("template", "rag")
    question = "What does the locked report say?"
    s.page.locator("#message textarea").fill(question)
    s.page.locator("#send").click()
    s.page.wait_for_function(
        "document.querySelector('#notice').innerText.includes('none are indexed yet')"
    )
    assert s.page.locator("#message textarea").input_value() == question  # given back to edit
    assert s.page.locator('#chatbot [data-testid="user"]').count() == 0  # nothing half-written
    s.choose("template", "chat")
    answer, _ = s.ask("What is the capital of France?")
    assert "Paris" in answer
    other = session()
    assert "Paris" in other.ask("What is the capital of France?")[0]


def test_html_and_scripts_in_a_retrieved_document_run_nothing(session, tmp_path):
    evil = tmp_path / "evil.md"
    evil.write_text(
        "# Harbour notes\n\nThe harbour bell rings at dawn to call the fishing boats home "
        '<form action="http://127.0.0.1:9/steal"><input name="pw"></form> '
        "![bell](http://127.0.0.1:9/bell.png) every day.\n"
        '<script>console.log("XSS-FIRED-script"); alert("xss")</script>\n'
        "<img src=x onerror=\"console.log('XSS-FIRED-img'); alert(2)\">\n"
        "[click for the timetable](javascript:console.log('XSS-FIRED-link'))\n"
    )
    s = session()
    assert "Added" in s.upload(evil)
    s.tab("Prompt")
    s.choose("template", "rag")
    answer, _ = s.ask("When does the harbour bell ring?")
    sources = answer.split("Sources")[1]
    assert "evil.md, page 1" in sources and "<script>" in sources  # shown as literal text
    chat = s.page.locator("#chatbot")
    for link in chat.locator("a").all():
        link.click(modifiers=["Alt"], no_wait_after=True, timeout=5000)
    time.sleep(1.0)
    assert chat.locator('a[href^="javascript"]').count() == 0
    assert chat.locator("script").count() == 0 and chat.locator('img[src="x"]').count() == 0
    # the quoted evidence (model-side text) holds a form and a remote image: shown as text
    assert "<form" in answer.split("Sources")[0] or "<form" in sources
    assert chat.locator("form").count() == 0 and chat.locator("input").count() == 0
    assert chat.locator('img[src^="http"]').count() == 0
    assert not s.dialogs, s.dialogs
    assert not [line for line in s.console if "XSS-FIRED" in line]


def test_stop_regenerate_and_clear(session):
    s = session()
    s.tab("Decoding")
    s.choose("mode", "Beam search")
    s.set_number("beams", 8)  # the slowest mode: time to press Stop mid-answer
    s.page.locator("#message textarea").fill("Write a long story about a dragon.")
    s.page.locator("#send").click()
    bot = s.page.locator('#chatbot [data-testid="bot"]').first
    s.page.wait_for_function(
        "(() => { const b = document.querySelector('#chatbot [data-testid=\"bot\"]');"
        " return b && b.innerText.trim() && b.innerText.trim() !== '…'; })()"
    )
    s.page.locator("#stop").click()
    time.sleep(3.0)
    stopped = bot.inner_text()
    assert "finished" not in s.page.locator("#notice").inner_text()  # it never ran to the end
    time.sleep(1.0)
    assert bot.inner_text() == stopped  # and nothing more arrives after Stop

    s.choose("mode", "Greedy")
    s.answers = 0
    s.page.locator("#regenerate").click()
    s.page.wait_for_function(
        "document.querySelector('#notice').innerText.includes('Answer 1 finished')"
    )
    assert s.page.locator('#chatbot [data-testid="user"]').count() == 1  # answered again, in place
    assert s.page.locator('#chatbot [data-testid="bot"]').first.inner_text().strip()

    s.page.locator("#clear").click()
    s.page.wait_for_function(
        "document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length === 0"
    )


def test_a_checkpoint_under_models_can_be_picked_and_answers(session):
    s = session()
    s.pick_model("tiny-demo")
    s.ask("Hello there")  # a random tiny model: any text, but streamed to the end
    assert "tokens from tiny-demo." in s.page.locator("#notice").inner_text()
    s.page.locator("#clear").click()  # else SmolLM2 reads (and imitates) the tiny model's babble
    s.page.wait_for_function(
        "document.querySelectorAll('#chatbot [data-testid=\"bot\"]').length === 0"
    )
    s.answers = 0
    s.pick_model("SmolLM2-135M-Instruct (default)")
    answer, _ = s.ask("What is the capital of France?")
    notice = s.page.locator("#notice").inner_text()
    assert "tokens from SmolLM2-135M-Instruct." in notice
    assert "Ran as weights Q4_1" in notice  # the machine's path: the GGUF's blocks, which kernels
    assert "Paris" in answer
