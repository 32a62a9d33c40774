"""The chats sidebar's handlers with the real Handlers, model and session keys: each answer is
recorded into the open conversation (a regenerated one replaces its turn), only the key's holder
sees it, and an exported JSON imports and replays identically."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from webapp.chat import ChatLimits, ChatService
from webapp.handlers import Handlers
from webapp.history import History
from webapp.history_tab import HistoryHandlers
from webapp.models import ModelRegistry

FIELDS = ["message", "history", "mode", "max_new_tokens", "session"]


@pytest.fixture(scope="module")
def handlers(smollm2) -> Handlers:
    models = ModelRegistry("no-models-here", loader=lambda source: smollm2)
    h = Handlers(ChatService(models, None, limits=ChatLimits(max_new_tokens=12)))
    h.fields = {name: name for name in FIELDS}  # components stand in by their field names
    return h


def answer(h: Handlers, key: str, message: str, chat: list, regenerate: bool = False) -> list:
    data = {
        "message": message,
        "history": chat,
        "mode": "greedy",
        "max_new_tokens": 12,
        "session": key,
    }
    stream = h.regenerate(data) if regenerate else h.respond(data)
    return list(stream)[-1][1]


def test_answers_are_recorded_exported_imported_and_replayed(tmp_path, handlers):
    hh = HistoryHandlers(handlers, History(tmp_path / "history"))
    key = handlers.keys.issue()
    chat = answer(handlers, key, "Name a fruit.", [])
    listing, cid = hh.record(key, None)
    assert cid and listing["value"] == cid and listing["choices"][0][0] == "Name a fruit. (1)"
    chat = answer(handlers, key, "And a vegetable?", chat)
    _, same = hh.record(key, cid)
    assert same == cid
    chat = answer(handlers, key, "", chat, regenerate=True)  # replaces the second turn
    _, same = hh.record(key, cid)
    assert hh.open(key, cid) == (chat, cid)  # the chat exactly as the page showed it
    assert hh.record(key, cid) == (gr.update(), cid)  # nothing new: nothing recorded

    other = handlers.keys.issue()  # another browser: its own, empty list
    assert hh.refresh(other, None)["choices"] == []
    with pytest.raises(gr.Error, match="No such conversation"):
        hh.open(other, cid)

    exported = Path(hh.export(key, cid, "json"))
    assert len(json.loads(exported.read_text())["turns"]) == 2
    assert "And a vegetable?" in Path(hh.export(key, cid, "md")).read_text()
    listing, new_id, shown, _ = hh.import_json(other, str(exported))
    assert new_id != cid and shown == chat and listing["value"] == new_id
    assert hh.replay(other, new_id).startswith("Replayed 2 turns: 2 identical.")


def test_bad_requests_say_what_to_do(tmp_path, handlers):
    hh = HistoryHandlers(handlers, History(tmp_path / "history"))
    key = handlers.keys.issue()
    for call, reason in [
        (lambda: hh.rename(key, None, "x"), "Open a conversation"),
        (lambda: hh.export(key, None, "md"), "Open a conversation"),
        (lambda: hh.replay(key, None), "Open \\(or import\\)"),
        (lambda: hh.import_json(key, str(tmp_path / "missing.json")), "Choose a conversation"),
        (lambda: hh.refresh("forged.key", None), "reload the page"),
    ]:
        with pytest.raises(gr.Error, match=reason):
            call()
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "scratchgpt.chat/1", "turns": [{"request": {}}]}')
    with pytest.raises(gr.Error, match="Turn 1 is incomplete"):
        hh.import_json(key, str(bad))
    assert hh.refresh(key, None)["choices"] == []


def test_unclaimed_answers_are_kept_only_up_to_a_cap(handlers, monkeypatch):
    """A page closed before its answer was recorded leaves it unclaimed; the oldest such go
    first, so the server's memory stays bounded, while a session's latest answer is kept."""
    import webapp.handlers

    monkeypatch.setattr(webapp.handlers, "MAX_UNCLAIMED_ANSWERS", 2)
    handlers.answers.clear()
    first, second, third = (handlers.keys.issue() for _ in range(3))
    answer(handlers, first, "Name a fruit.", [])
    answer(handlers, second, "Name a fruit.", [])
    answer(handlers, first, "Name a tree.", [])  # first's latest: now the newest entry
    answer(handlers, third, "Name a fruit.", [])
    assert handlers.take_answer(second) is None  # the oldest unclaimed one went
    assert handlers.take_answer(first)[0].message == "Name a tree."
    assert handlers.take_answer(third) is not None
