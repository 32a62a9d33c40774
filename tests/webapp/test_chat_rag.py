"""RAG through webapp.chat in-process: numbered sources, waiting for indexing, defaults, evidence,
answers the documents do not cover, retrieval modes; real model, embedder and Chroma."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from core.generate.prompts import NOT_COVERED
from core.generate.settings import DEFAULTS
from tests.ingest.pdfs import text_pdf
from webapp.chat import (
    RAG_DEFAULTS,
    ChatInputError,
    ChatLimits,
    ChatRequest,
    ChatService,
)
from webapp.display import answer_markdown, conversation, sources_markdown


def test_rag_cites_numbered_sources_from_the_sessions_documents(service, library):
    pdf = text_pdf(
        [
            "Cover page about nothing in particular.",
            "The lighthouse keeper's cat is named Marmalade Tusk.",
        ]
    )
    [result] = library.add_files("session-a", [("keeper.pdf", pdf)])
    assert result.ok, result.message
    request = ChatRequest("What is the lighthouse keeper's cat named?", template="rag")
    prepared = service.prepare(request, "session-a")
    assert prepared.sources[0].source == "keeper.pdf" and prepared.sources[0].page == 2
    assert (
        "[1] (keeper.pdf, page 2)\nThe lighthouse keeper's cat is named Marmalade Tusk."
        in prepared.text
    )
    final = list(service.reply(request, "session-a"))[-1]
    assert final.done and final.sources[0].page == 2
    shown = answer_markdown(final)
    assert "**\\[1\\]** keeper.pdf, page 2 · score" in shown
    assert conversation([{"role": "assistant", "content": shown}]) == [
        {"role": "assistant", "content": final.text}
    ]
    with pytest.raises(
        ChatInputError, match="none are indexed yet"
    ):  # another session sees nothing
        service.prepare(request, "session-b")


def test_a_rag_question_during_indexing_waits_for_it(registry, library):
    # a prompt cap that four sources overflow: the lowest-ranked ones go, and the answer says so
    limits = ChatLimits(max_new_tokens=12, max_prompt_tokens=400, index_wait_in_slot_s=300)
    service = ChatService(registry, library, limits=limits)
    pages = [f"Paragraph {i} about harbour logistics and tide tables. " * 30 for i in range(12)]
    pages[7] = "The harbour master's password is CORAL-LANTERN."
    worker = threading.Thread(
        target=library.add_files, args=("session-a", [("harbour.pdf", text_pdf(pages))])
    )
    worker.start()
    while not library.pending("session-a"):
        time.sleep(0.01)
    replies = iter(
        service.reply(
            ChatRequest("What is the harbour master's password?", template="rag"), "session-a"
        )
    )
    assert "Waiting for your uploads to finish indexing" in next(replies).text
    *_, final = replies
    worker.join()
    assert final.sources and final.sources[0].page == 8
    assert any("best of 4 sources to fit the prompt budget" in n for n in final.notices)
    assert all(e.number <= len(final.sources) for e in final.evidence)  # quotes only kept ones


def test_rag_defaults_apply_when_the_client_sends_no_knobs(service):
    rag = service.settings(ChatRequest("q", template="rag"))
    cap = service.limits.max_new_tokens  # the fixture's server caps replies at 12 tokens
    assert rag == replace(RAG_DEFAULTS, max_new_tokens=min(RAG_DEFAULTS.max_new_tokens, cap))
    assert rag.no_repeat_ngram_size > 0 and not rag.penalize_prompt  # what stops loops
    chat = service.settings(ChatRequest("q"))
    assert chat == replace(DEFAULTS, max_new_tokens=min(DEFAULTS.max_new_tokens, cap))
    mine = service.settings(ChatRequest("q", template="rag", no_repeat_ngram_size=0, top_k=5))
    assert mine.no_repeat_ngram_size == 0 and mine.top_k == 5  # still the client's to override


def test_rag_evidence_is_a_sentence_of_source_one_and_the_answer_quotes_it(service, library):
    pages = [
        "Cover page about nothing in particular.",
        "Lighthouses guide ships. The lighthouse keeper's cat is named Marmalade Tusk. "
        "The lamp is lit at dusk.",
    ]
    assert library.add_files("session-a", [("keeper.pdf", text_pdf(pages))])[0].ok
    request = ChatRequest("What is the name of the lighthouse keeper's cat?", template="rag")
    prepared = service.prepare(request, "session-a")
    evidence = prepared.evidence[0]  # the best of the (up to two) quoted sentences
    assert (evidence.number, evidence.source, evidence.page) == (1, "keeper.pdf", 2)
    assert evidence.sentence == "The lighthouse keeper's cat is named Marmalade Tusk."
    assert evidence.sentence in prepared.sources[0].text and prepared.sources[0].page == 2
    assert f'from [1]: "{evidence.sentence}"' in prepared.text  # shown by "Show prompt"
    final = list(service.reply(request, "session-a"))[-1]
    assert f'\n\n> "{evidence.sentence}" [1] (keeper.pdf, page 2)' in final.text
    assert f"<mark>{evidence.sentence}</mark>" in answer_markdown(final).replace("\\", "")


def test_a_question_the_documents_do_not_cover_is_answered_so_without_the_model(
    service, library, smollm2, monkeypatch
):
    # related enough to be retrieved (cosine 0.14), far below the 0.45 an answer needs
    text = b"Football clubs train on grass pitches in winter."
    assert library.add_files("session-a", [("clubs.txt", text)])[0].ok
    monkeypatch.setattr(smollm2, "start", lambda *a, **k: pytest.fail("the model was asked"))
    request = ChatRequest("Who won the 1966 football world cup final?", template="rag")
    [final] = list(service.reply(request, "session-a"))
    assert final.done and final.text.startswith(NOT_COVERED)
    assert "closest passages: [1] clubs.txt, page 1" in final.text and final.evidence == ()
    assert any("the documents do not cover this" in n for n in final.notices)


def test_rag_retrieval_mode_is_a_request_field_and_sources_say_why_they_ranked(service, library):
    pages = ["Set the zorbulate depth with the --zorbulate-depth option.", "Tides at noon."]
    assert library.add_files("session-a", [("opts.txt", "\f".join(pages).encode())])[0].ok
    question = "How do I change the zorbulate depth?"
    default = service.prepare(ChatRequest(question, template="rag"), "session-a")
    assert default.sources[0].page == 1 and default.sources[0].why.mode == "hybrid+rerank"
    keyword = service.prepare(
        ChatRequest(question, template="rag", retrieval="keyword"), "session-a"
    )
    assert [(h.page, h.why.mode) for h in keyword.sources] == [(1, "keyword")]  # p2 lacks a word
    shown = sources_markdown(keyword.sources, keyword.evidence)
    assert "<details><summary>Why these sources ranked</summary>" in shown
    assert "\\[1\\] dense 0." in shown and "keyword \\#1" in shown and shown.endswith("</details>")
    with pytest.raises(ChatInputError, match="retrieval must be one of dense, keyword"):
        service.prepare(ChatRequest(question, template="rag", retrieval="magic"), "session-a")
    with pytest.raises(ChatInputError, match="no letters or digits"):
        service.prepare(ChatRequest("?!? …", template="rag"), "session-a")
