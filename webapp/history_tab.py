"""The "Chats" sidebar: this browser session's conversations, kept on the server (`webapp.history`)
under an id derived from the session key — so only the page holding the key sees them, and they
survive reloads (and restarts, where `SCRATCHGPT_SECRET` keeps keys valid).

Each finished answer is recorded into the open conversation (a new one on the first answer); a
conversation can be opened, renamed, deleted, exported as Markdown or JSON, and an exported JSON
imported and replayed, which reports turn by turn whether the answers came back the same.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from webapp.handlers import Handlers
from webapp.history import (
    History,
    HistoryError,
    messages,
    replay,
    to_json,
    to_markdown,
    turn_record,
)

PRIVATE = {"api_visibility": "private"}


def history_owner(session: str) -> str:
    """The history folder of a session: a hash, so the key itself is never written to disk."""
    return "chat-" + hashlib.sha256(session.encode()).hexdigest()[:32]


class HistoryHandlers:
    def __init__(self, h: Handlers, history: History) -> None:
        self.h, self.history = h, history
        self.exports = Path(tempfile.mkdtemp(prefix="scratchgpt-exports-"))

    def owner(self, key: Any) -> str:
        return history_owner(self.h.session(key))

    def _choices(self, owner: str, current: str | None) -> dict[str, Any]:
        chats = self.history.list(owner)
        choices = [(f"{c.title} ({c.turns})", c.id) for c in chats]
        value = current if any(c.id == current for c in chats) else None
        return gr.update(choices=choices, value=value)

    def refresh(self, key: Any, current: str | None) -> dict[str, Any]:
        return self._choices(self.owner(key), current)

    def record(self, key: Any, current: str | None) -> tuple[dict[str, Any], str | None]:
        """After an answer: add it to the open conversation (a new one if none is open)."""
        done = self.h.take_answer(key)
        if done is None:  # refused or stopped: nothing to keep
            return gr.update(), current
        owner = self.owner(key)
        request, reply, shown, regenerated = done
        try:
            if not self.history.exists(owner, current):  # none open, or deleted meanwhile
                current, regenerated = self.history.new(owner), False
            turn = turn_record(request, reply, shown)
            self.history.append(owner, current, turn, replace_last=regenerated)
        except HistoryError as err:
            gr.Warning(str(err))
        return self._choices(owner, current), current

    def new(self, key: Any) -> tuple[dict[str, Any], None, list, str]:
        return self._choices(self.owner(key), None), None, [], ""

    def open(self, key: Any, cid: str | None) -> tuple[list[dict[str, str]], str | None]:
        if not cid:
            return [], None
        try:
            return messages(self.history.load(self.owner(key), cid)["turns"]), cid
        except HistoryError as err:
            raise gr.Error(str(err)) from err

    def rename(self, key: Any, cid: str | None, title: str) -> tuple[dict[str, Any], str]:
        owner = self.owner(key)
        if not cid:
            raise gr.Error("Open a conversation to rename it.")
        try:
            self.history.rename(owner, cid, title)
        except HistoryError as err:
            raise gr.Error(str(err)) from err
        return self._choices(owner, cid), ""

    def delete(self, key: Any, cid: str | None) -> tuple[dict[str, Any], None, list]:
        owner = self.owner(key)
        if not cid:
            raise gr.Error("Open a conversation to delete it.")
        try:
            self.history.delete(owner, cid)
        except HistoryError as err:
            raise gr.Error(str(err)) from err
        return self._choices(owner, None), None, []

    def export(self, key: Any, cid: str | None, kind: str) -> str:
        if not cid:
            raise gr.Error("Open a conversation to export it.")
        try:
            conv = self.history.load(self.owner(key), cid)
        except HistoryError as err:
            raise gr.Error(str(err)) from err
        text = to_markdown(conv) if kind == "md" else to_json(conv)
        folder = Path(tempfile.mkdtemp(dir=self.exports))  # one folder per export: no clashes
        path = folder / f"chat-{cid}.{kind}"
        path.write_text(text, encoding="utf-8")
        return str(path)

    def import_json(
        self, key: Any, file: Any
    ) -> tuple[dict[str, Any], str, list[dict[str, str]], None]:
        owner = self.owner(key)
        path = Path(file if isinstance(file, str) else getattr(file, "path", "") or "")
        if not path.is_file():
            raise gr.Error("Choose a conversation .json file exported from ScratchGPT.")
        if path.stat().st_size > self.history.limits.max_bytes:
            raise gr.Error(f"The file is over {self.history.limits.max_bytes // 1_000_000} MB.")
        try:
            cid = self.history.import_json(owner, path.read_bytes())
        except HistoryError as err:
            raise gr.Error(str(err)) from err
        finally:
            path.unlink(missing_ok=True)
        turns = self.history.load(owner, cid)["turns"]
        return self._choices(owner, cid), cid, messages(turns), None

    def replay(self, key: Any, cid: str | None) -> str:
        """Answer every turn again with its recorded settings; say which came back the same."""
        if not cid:
            raise gr.Error("Open (or import) a conversation to replay it.")
        session = self.h.session(key)
        try:
            conv = self.history.load(history_owner(session), cid)
        except HistoryError as err:
            raise gr.Error(str(err)) from err
        same, lines = 0, []
        for number, reply in replay(self.h.service, conv, session):
            recorded = conv["turns"][number - 1]["reply"]["text"]
            same += reply.text == recorded
            lines.append(f"{number}. {'identical' if reply.text == recorded else 'different'}")
        return f"Replayed {len(lines)} turns: {same} identical.  \n" + "  \n".join(lines)


@dataclass
class Sidebar:
    """What the page wires to the sidebar: record after each answer, refresh on load."""

    record: Any
    refresh: Any
    current: Any  # the open conversation's id (gr.State)
    inputs: list[Any]  # [session key, current]
    outputs: list[Any]  # [conversation list, current]


def build_history_sidebar(
    h: Handlers, history: History, session: Any, chatbot: Any, notice: Any, model: dict[str, Any]
) -> Sidebar:
    """The sidebar and its events (laid out where it is called, inside the Blocks)."""
    hh = HistoryHandlers(h, history)
    current = gr.State(None)
    with gr.Sidebar(label="Chats", open=False, elem_id="chats"):
        gr.Markdown("### Your chats\nKept on this server for this browser.")
        chats = gr.Dropdown([], label="Conversations", elem_id="chat-list")
        new = gr.Button("New chat", elem_id="chat-new")
        title = gr.Textbox(label="Rename to", elem_id="chat-title")
        with gr.Row():
            rename = gr.Button("Rename", size="sm")
            delete = gr.Button("Delete", size="sm", variant="stop", elem_id="chat-delete")
        with gr.Row():
            export_md = gr.Button("Export .md", size="sm", elem_id="chat-export-md")
            export_json = gr.Button("Export .json", size="sm", elem_id="chat-export-json")
        exported = gr.File(label="Export", interactive=False, elem_id="chat-export")
        imported = gr.File(label="Import .json", file_types=[".json"], elem_id="chat-import")
        replay_btn = gr.Button("Replay", size="sm", elem_id="chat-replay")
        replayed = gr.Markdown(elem_id="chat-replayed")

    chats.input(hh.open, [session, chats], [chatbot, current], **PRIVATE)
    new.click(hh.new, session, [chats, current, chatbot, notice], **PRIVATE)
    rename.click(hh.rename, [session, current, title], [chats, title], **PRIVATE)
    delete.click(hh.delete, [session, current], [chats, current, chatbot], **PRIVATE)
    export_md.click(lambda k, c: hh.export(k, c, "md"), [session, current], exported, **PRIVATE)
    export_json.click(lambda k, c: hh.export(k, c, "json"), [session, current], exported, **PRIVATE)
    imported.upload(
        hh.import_json, [session, imported], [chats, current, chatbot, imported], **PRIVATE
    )
    replay_btn.click(hh.replay, [session, current], replayed, **PRIVATE, **model)
    return Sidebar(hh.record, hh.refresh, current, [session, current], [chats, current])
