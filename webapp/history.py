"""Chat history kept on the server: a session's conversations as JSON files, listed, renamed,
deleted, exported (Markdown for people, JSON for replay) and imported.

Each turn records what decides its answer — the message, the template and its fields, the model,
every decoding setting and the seed, the retrieval mode — and what came back: the text, how it
ended, and the sources with file and page. `replay` sends the same turns again, so a greedy
conversation comes back token for token. Files live under `<root>/<owner>/<id>.json` and are
replaced atomically; owner and conversation ids are checked, never used as given.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from webapp.chat import ChatRequest, ChatService, Reply

SCHEMA = "scratchgpt.chat/1"
SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# the request fields a turn keeps (its history is the conversation itself)
REQUEST_FIELDS = tuple(f.name for f in fields(ChatRequest) if f.name not in ("history",))


class HistoryError(ValueError):
    """A conversation that cannot be stored, found or imported; the message says why."""


@dataclass(frozen=True)
class HistoryLimits:
    max_conversations: int = 200  # per owner; the oldest is dropped to make room
    max_turns: int = 500
    max_bytes: int = 4_000_000  # one conversation's JSON
    max_title_chars: int = 120


@dataclass(frozen=True)
class Summary:
    id: str
    title: str
    updated: float
    turns: int


def turn_record(request: ChatRequest, reply: Reply, shown: str) -> dict[str, Any]:
    """One finished turn: the request (without its history), and the reply with its sources.
    `shown` is the answer as the chat displayed it (what the next turn's history holds)."""
    return {
        "request": {name: _plain(getattr(request, name)) for name in REQUEST_FIELDS},
        "reply": {
            "text": reply.text,
            "shown": shown,
            "model": reply.model,
            "finish_reason": reply.finish_reason,
            "new_tokens": reply.new_tokens,
            "notices": list(reply.notices),
            "sources": [
                {
                    "source": h.source,
                    "page": h.page,
                    "score": round(float(h.score), 6),
                    "chunk_id": h.chunk_id,
                }
                for h in reply.sources
            ],
        },
    }


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def _check_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not SAFE_ID.fullmatch(value):
        raise HistoryError(f"No such {kind}: {str(value)[:80]!r}.")
    return value


class History:
    """Conversations per owner (the server's id for a session), on disk under `root`."""

    def __init__(self, root: str | Path, limits: HistoryLimits | None = None) -> None:
        self.root, self.limits = Path(root), limits or HistoryLimits()
        self._lock = threading.RLock()  # import_json holds it across new()

    def _dir(self, owner: str) -> Path:
        return self.root / _check_id("session", owner)

    def _path(self, owner: str, cid: str) -> Path:
        return self._dir(owner) / f"{_check_id('conversation', cid)}.json"

    def _write(self, owner: str, conv: dict[str, Any]) -> None:
        data = json.dumps(conv, ensure_ascii=False, indent=1)
        if len(data.encode()) > self.limits.max_bytes:
            raise HistoryError(
                f"This conversation is over {self.limits.max_bytes // 1_000_000} MB; "
                "start a new one (export this one first to keep it)."
            )
        path = self._path(owner, conv["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        tmp.write_text(data, encoding="utf-8")
        os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one

    def exists(self, owner: str, cid: str | None) -> bool:
        return (
            bool(cid)
            and SAFE_ID.fullmatch(str(cid)) is not None
            and (self._path(owner, str(cid)).is_file())
        )

    def load(self, owner: str, cid: str) -> dict[str, Any]:
        try:
            return json.loads(self._path(owner, cid).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise HistoryError(f"No such conversation: {cid!r} (deleted, or expired).") from None

    def list(self, owner: str) -> list[Summary]:
        """This owner's conversations, the most recently updated first."""
        out = []
        for path in self._dir(owner).glob("*.json"):
            try:
                conv = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # removed meanwhile
            out.append(Summary(conv["id"], conv["title"], conv["updated"], len(conv["turns"])))
        return sorted(out, key=lambda s: (-s.updated, s.id))

    def new(self, owner: str, title: str = "") -> str:
        with self._lock:
            existing = self.list(owner)
            for old in existing[self.limits.max_conversations - 1 :]:
                self._path(owner, old.id).unlink(missing_ok=True)
            now = time.time()
            conv = {
                "schema": SCHEMA,
                "id": secrets.token_hex(8),
                "title": self._title(title) or "New chat",
                "created": now,
                "updated": now,
                "turns": [],
            }
            self._write(owner, conv)
            return conv["id"]

    def _title(self, title: str) -> str:
        return " ".join(str(title).split())[: self.limits.max_title_chars]

    def append(
        self, owner: str, cid: str, turn: dict[str, Any], *, replace_last: bool = False
    ) -> None:
        """Add a finished turn (or, regenerated, put it in place of the last one); the first one
        names an untitled conversation."""
        with self._lock:
            conv = self.load(owner, cid)
            if replace_last and conv["turns"]:
                conv["turns"].pop()
            if len(conv["turns"]) >= self.limits.max_turns:
                raise HistoryError(
                    f"This conversation has {self.limits.max_turns} turns, the most kept; "
                    "start a new one."
                )
            if not conv["turns"] and conv["title"] == "New chat":
                conv["title"] = self._title(turn["request"]["message"]) or "New chat"
            conv["turns"].append(turn)
            conv["updated"] = time.time()
            self._write(owner, conv)

    def rename(self, owner: str, cid: str, title: str) -> None:
        if not self._title(title):
            raise HistoryError("Type a name for the conversation.")
        with self._lock:
            conv = self.load(owner, cid)
            conv["title"], conv["updated"] = self._title(title), time.time()
            self._write(owner, conv)

    def delete(self, owner: str, cid: str) -> None:
        path = self._path(owner, cid)
        if not path.exists():
            raise HistoryError(f"No such conversation: {cid!r} (deleted, or expired).")
        path.unlink()

    def purge(self, owner: str) -> None:
        """Every conversation of an owner (its session expired)."""
        folder = self._dir(owner)
        for path in folder.glob("*"):
            path.unlink(missing_ok=True)
        if folder.exists():
            folder.rmdir()

    def import_json(self, owner: str, text: str | bytes) -> str:
        """A conversation exported by `to_json`, stored as a new one; its id."""
        conv = parse_export(text, self.limits)
        with self._lock:
            cid = self.new(owner, conv["title"])
            stored = self.load(owner, cid) | {"turns": conv["turns"]}
            self._write(owner, stored)
        return cid


# -- export and import -----------------------------------------------------------------------------


def messages(turns: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The chat as the UI held it after these turns (the next request's history)."""
    out: list[dict[str, str]] = []
    for turn in turns:
        out.append({"role": "user", "content": turn["request"]["message"]})
        out.append({"role": "assistant", "content": turn["reply"]["shown"]})
    return out


def to_json(conv: dict[str, Any]) -> str:
    return json.dumps(conv, ensure_ascii=False, indent=1)


def to_markdown(conv: dict[str, Any]) -> str:
    lines = [f"# {conv['title']}", ""]
    for i, turn in enumerate(conv["turns"], 1):
        req, rep = turn["request"], turn["reply"]
        knobs = ", ".join(
            f"{k}={req[k]}"
            for k in (
                "mode",
                "temperature",
                "top_k",
                "top_p",
                "num_beams",
                "repetition_penalty",
                "no_repeat_ngram_size",
                "max_new_tokens",
                "seed",
            )
            if req.get(k) is not None
        )
        lines += [f"## {i}. You", "", req["message"], "", f"## {i}. {rep['model'] or 'Model'}", ""]
        lines += [rep["text"], ""]
        for n, src in enumerate(rep["sources"], 1):
            lines.append(f"- [{n}] {src['source']}, page {src['page']}")
        lines += [
            "",
            f"*template {req['template']}, retrieval {req['retrieval']}"
            + (f", {knobs}" if knobs else "")
            + f"; ended: {rep['finish_reason']}*",
            "",
        ]
    return "\n".join(lines)


def parse_export(text: str | bytes, limits: HistoryLimits) -> dict[str, Any]:
    """A `to_json` export, checked field by field; HistoryError says what is wrong."""
    if len(text) > limits.max_bytes:
        raise HistoryError(f"The file is over {limits.max_bytes // 1_000_000} MB.")
    try:
        conv = json.loads(text)
    except (ValueError, UnicodeDecodeError) as err:
        raise HistoryError(f"Not a conversation export (invalid JSON: {err}).") from None
    if not isinstance(conv, dict) or conv.get("schema") != SCHEMA:
        raise HistoryError(f"Not a ScratchGPT conversation export (expected schema {SCHEMA}).")
    turns = conv.get("turns")
    if not isinstance(turns, list) or len(turns) > limits.max_turns:
        raise HistoryError(f"'turns' must be a list of at most {limits.max_turns} turns.")
    for i, turn in enumerate(turns, 1):
        try:
            req, rep = turn["request"], turn["reply"]
            ChatRequest(**{k: req[k] for k in REQUEST_FIELDS if k in req})
            assert isinstance(req["message"], str) and isinstance(rep["text"], str)
            assert isinstance(rep["shown"], str) and isinstance(rep["sources"], list)
        except (KeyError, TypeError, AssertionError):
            raise HistoryError(
                f"Turn {i} is incomplete: each turn needs request.message and reply.text, "
                "reply.shown and reply.sources."
            ) from None
    return {"title": str(conv.get("title") or "Imported chat"), "turns": turns}


def request_of(turn: dict[str, Any], history: list[dict[str, str]]) -> ChatRequest:
    req = {k: turn["request"][k] for k in REQUEST_FIELDS if k in turn["request"]}
    req["examples"] = [tuple(e) for e in req.get("examples") or []]
    return ChatRequest(**req, history=history)


def replay(
    service: ChatService, conv: dict[str, Any], session: str = ""
) -> Iterator[tuple[int, Reply]]:
    """Send each recorded turn again, with the recorded history before it; yield (turn number,
    new final reply). Greedy and seeded sampling turns come back the same."""
    for i, turn in enumerate(conv["turns"]):
        replies = service.reply(request_of(turn, messages(conv["turns"][:i])), session)
        yield i + 1, deque(replies, maxlen=1).pop()  # the stream's last: the finished reply
