"""Chat history on the server: kept, listed, renamed, deleted, exported as Markdown and JSON, and
imported to replay — greedy answers come back token for token with the real default model."""

from __future__ import annotations

import json

import pytest

from webapp.chat import ChatLimits, ChatRequest, ChatService
from webapp.display import answer_markdown
from webapp.history import (
    History,
    HistoryError,
    HistoryLimits,
    messages,
    replay,
    to_json,
    to_markdown,
    turn_record,
)
from webapp.models import ModelRegistry

OWNER = "session-0123abcd"


@pytest.fixture(scope="module")
def service(smollm2) -> ChatService:
    models = ModelRegistry("no-models-here", loader=lambda source: smollm2)
    return ChatService(models, None, limits=ChatLimits(max_new_tokens=16))


def chat(service: ChatService, history: History, cid: str, request: ChatRequest) -> None:
    """What the UI does for one turn: answer it, then record it."""
    final = list(service.reply(request))[-1]
    history.append(OWNER, cid, turn_record(request, final, answer_markdown(final)))


def conversation(service: ChatService, history: History) -> str:
    cid = history.new(OWNER)
    first = ChatRequest("Name a colour of the sky.", mode="greedy")
    chat(service, history, cid, first)
    turns = history.load(OWNER, cid)["turns"]
    second = ChatRequest(
        "And one of grass?", history=messages(turns), mode="greedy", repetition_penalty=1.2
    )
    chat(service, history, cid, second)
    return cid


def test_export_import_replay_gives_the_same_greedy_answers(tmp_path, service):
    history = History(tmp_path / "history")
    cid = conversation(service, history)
    exported = to_json(history.load(OWNER, cid))
    again = History(tmp_path / "elsewhere")  # another server, or after a restart
    new_id = again.import_json("session-other", exported)
    conv = again.load("session-other", new_id)
    assert len(conv["turns"]) == 2 and conv["title"] == "Name a colour of the sky."
    for number, reply in replay(service, conv):
        recorded = conv["turns"][number - 1]["reply"]
        assert reply.text == recorded["text"] and reply.new_tokens == recorded["new_tokens"]
    settings = conv["turns"][1]["request"]
    assert settings["mode"] == "greedy" and settings["repetition_penalty"] == 1.2


def test_the_markdown_export_names_every_turn_its_settings_and_model(tmp_path, service):
    history = History(tmp_path / "history")
    conv = history.load(OWNER, conversation(service, history))
    text = to_markdown(conv)
    for turn in conv["turns"]:
        assert turn["request"]["message"] in text and turn["reply"]["text"] in text
    assert "repetition_penalty=1.2" in text and "mode=greedy" in text
    assert text.count("## 1.") == 2 and text.count("## 2.") == 2


def test_list_rename_delete_and_caps(tmp_path):
    history = History(tmp_path / "h", HistoryLimits(max_conversations=2, max_turns=1))
    a = history.new(OWNER, "first")
    b = history.new(OWNER, "second")
    c = history.new(OWNER, "third")  # the oldest goes to make room
    assert [s.id for s in history.list(OWNER)] == [c, b]
    assert a not in {s.id for s in history.list(OWNER)}
    history.rename(OWNER, b, "  renamed\n chat ")
    assert history.load(OWNER, b)["title"] == "renamed chat"
    with pytest.raises(HistoryError, match="Type a name"):
        history.rename(OWNER, b, "   ")
    turn = {"request": {"message": "hi"}, "reply": {"text": "hello"}}
    history.append(OWNER, b, turn)
    with pytest.raises(HistoryError, match="1 turns, the most kept"):
        history.append(OWNER, b, turn)
    history.delete(OWNER, b)
    with pytest.raises(HistoryError, match="No such conversation"):
        history.load(OWNER, b)
    assert history.list("session-nobody") == []


def test_ids_from_the_client_cannot_leave_the_history_folder(tmp_path):
    history = History(tmp_path / "h")
    (tmp_path / "secret.json").write_text("{}")
    for bad in ("../secret", "..", "a/b", "", "x" * 65, "é"):
        with pytest.raises(HistoryError, match="No such"):
            history.load(OWNER, bad)
        with pytest.raises(HistoryError, match="No such"):
            history.list(bad)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "invalid JSON"),
        ("[]", "Not a ScratchGPT conversation export"),
        (json.dumps({"schema": "other/1", "turns": []}), "expected schema"),
        (json.dumps({"schema": "scratchgpt.chat/1", "turns": "x"}), "must be a list"),
        (json.dumps({"schema": "scratchgpt.chat/1", "turns": [{"request": {}}]}), "Turn 1"),
        (
            json.dumps(
                {
                    "schema": "scratchgpt.chat/1",
                    "turns": [
                        {
                            "request": {"message": "q", "bogus": 1},
                            "reply": {"text": "a", "shown": "a", "sources": []},
                        }
                    ],
                }
            ),
            None,  # an unknown field from a newer version is ignored
        ),
        ("x" * 5_000_001, "over 4 MB"),
    ],
)
def test_bad_imports_are_refused_with_the_reason_and_store_nothing(tmp_path, text, reason):
    history = History(tmp_path / "h")
    if reason is None:
        cid = history.import_json(OWNER, text)
        assert history.load(OWNER, cid)["turns"][0]["request"]["message"] == "q"
        return
    with pytest.raises(HistoryError, match=reason):
        history.import_json(OWNER, text)
    assert history.list(OWNER) == []
