"""The Gradio event functions behind `webapp.ui`: they turn component values into
`webapp.chat` calls and Gradio updates, and user errors into `gr.Error` messages.

Documents, "show prompt", delete and RAG answers belong to a session named by a key the server
issued (`webapp.sessions`): the page gets one on load and keeps it in the browser; `gradio_client`
callers get one from `/new_session`. Gradio's own session hash, which a client picks, names
nothing here.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from ingest import DEFAULT_MODE, IngestError
from webapp.chat import (
    DEFAULT_SYSTEM_PROMPT,
    ChatInputError,
    ChatRequest,
    ChatService,
    Reply,
    template_defaults,
)
from webapp.display import answer_markdown, plain, text_of
from webapp.inspect_runs import chat_logprobs
from webapp.sessions import SessionKeys

# Which knobs each mode reads; the others are shown greyed out rather than silently ignored.
USES = {
    "greedy": {"repetition_penalty"},
    "sample": {"temperature", "top_k", "top_p", "seed", "repetition_penalty"},
    "beam": {"num_beams", "repetition_penalty"},
}
KNOBS = ("temperature", "top_k", "top_p", "num_beams", "seed", "repetition_penalty")


NO_SESSION = (
    "This page's session key is missing, or this server did not issue it (it may have restarted "
    "since); reload the page. (gradio_client: pass session= a key from /new_session.)"
)


@contextmanager
def shown_to_user() -> Iterator[None]:
    """Errors a user can act on (refused requests, document and store trouble such as a locked
    store) shown as their own sentence rather than a bare "Error"."""
    try:
        yield
    except (ChatInputError, IngestError) as err:
        raise gr.Error(str(err)) from err


def uploaded(files: Any) -> list[tuple[str, Path]]:
    """(name, server path) of uploaded files, unread: the library reads each in its turn."""
    out = []
    for item in files or []:
        raw = (
            item
            if isinstance(item, str)
            else item.get("path")
            if isinstance(item, dict)
            else item.path
        )
        path = Path(raw)
        original = item.get("orig_name") if isinstance(item, dict) else None
        out.append((os.path.basename(original or path.name), path))
    return out


def discard(paths: list[Path]) -> None:
    """Remove Gradio's cached copies of uploads, so nobody can download them afterwards."""
    for path in paths:
        path.unlink(missing_ok=True)
        if path.parent.name != "gradio" and path.parent.is_dir() and not any(path.parent.iterdir()):
            shutil.rmtree(path.parent, ignore_errors=True)


PROGRESS = gr.Progress()  # Gradio injects a live tracker wherever this default appears


MAX_UNCLAIMED_ANSWERS = 1024  # answers kept for the chat history to take (`take_answer`)


class Handlers:
    """The event functions, bound to one `ChatService` and the server's session keys."""

    def __init__(self, service: ChatService, keys: SessionKeys | None = None) -> None:
        self.service = service
        self.keys = keys or SessionKeys()
        self.fields: dict[Any, str] = {}  # component -> ChatRequest field or "session"; by layout
        # session -> its last finished answer (request, reply, as shown, regenerated?), until the
        # chat history takes it (`take_answer`)
        self.answers: dict[str, tuple[ChatRequest, Reply, str, bool]] = {}

    # -- sessions ----------------------------------------------------------------------------------

    def session(self, key: Any) -> str:
        """The session a key names; `gr.Error` (reload the page) for a key this server did not
        sign: missing, forged, or from before a restart."""
        session = self.keys.verify(key)
        if session is None:
            raise gr.Error(NO_SESSION)
        return session

    def new_session(self) -> str:
        """A fresh session key for a `gradio_client` caller: pass it as `session` to `/upload`
        and `/chat`, and keep it to yourself (whoever holds it reads that session's documents)."""
        return self.keys.issue()

    # -- chat --------------------------------------------------------------------------------------

    def _form(self, data: dict[Any, Any]) -> dict[str, Any]:
        """The form by field name (Gradio passes a set of inputs as {component: value})."""
        return {self.fields[c]: v for c, v in data.items() if c in self.fields}

    def request(self, data: dict[Any, Any], **changes: Any) -> ChatRequest:
        """A ChatRequest from the form."""
        form = self._form(data) | changes
        form.pop("session", None)
        examples = [
            tuple(str(c or "") for c in row[:2])
            for row in form.pop("examples", None) or []
            if len(row) >= 2
        ]
        seed, history = form.pop("seed", None), form.pop("history", None) or []
        return ChatRequest(
            **form, history=history, examples=examples, seed=None if seed is None else int(seed)
        )

    def _answer(
        self, chat: ChatRequest, key: str, regenerated: bool = False
    ) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Stream (textbox, chat, notice) states. A refused request leaves the chat as it was,
        puts the message back in the box and says why (nothing half-written stays behind)."""
        with shown_to_user():
            turn = self.service.check(chat)
        history = list(chat.history)
        shown = [*history, {"role": "user", "content": chat.message}]
        yield "", [*shown, {"role": "assistant", "content": "…"}], ""
        reply = Reply("")
        try:
            for reply in self.service.reply(turn, key):
                yield (
                    "",
                    [*shown, {"role": "assistant", "content": answer_markdown(reply) or "…"}],
                    "",
                )
        except (ChatInputError, IngestError) as err:
            yield chat.message, history, f"⚠️ {plain(str(err))}"
            raise gr.Error(str(err)) from err
        n = sum(turn.get("role") == "assistant" for turn in shown) + 1
        final = [*shown, {"role": "assistant", "content": answer_markdown(reply)}]
        self.answers.pop(key, None)  # re-inserted last: the oldest unclaimed answers go first
        self.answers[key] = (chat, reply, final[-1]["content"], regenerated)
        while len(self.answers) > MAX_UNCLAIMED_ANSWERS:  # a page gone before it recorded one
            del self.answers[next(iter(self.answers))]
        yield "", final, notices(reply, n)

    def take_answer(self, key: Any) -> tuple[ChatRequest, Reply, str, bool] | None:
        """The session's last finished answer, once (None if it was refused or stopped)."""
        return self.answers.pop(self.session(key), None)

    def await_indexing(self, template: str, key: str) -> Iterator[str]:
        """Before a RAG question takes the model slot: wait here, outside it, for the session's
        uploads to be indexed (the notice says which); the slot itself waits only briefly."""
        session = self.session(key)
        pending = self.service.uploads_pending(template, session)
        if pending:
            names = ", ".join(plain(n) for n in dict.fromkeys(pending))
            yield f"⏳ Waiting for {names} to finish indexing before answering…"
            with shown_to_user():
                self.service.wait_for_uploads(template, session, self.service.limits.index_wait_s)
        yield ""

    def respond(self, data: dict[Any, Any]) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Stream an answer into the chat; the sources go beneath it."""
        key = self.session(self._form(data).get("session"))
        yield from self._answer(self.request(data), key)

    @staticmethod
    def last_turn(chat: ChatRequest) -> ChatRequest:
        """The request behind the chat's last answer: its last user message and what came before."""
        users = [i for i, turn in enumerate(chat.history) if turn.get("role") == "user"]
        if not users:
            raise gr.Error("Nothing to regenerate yet: send a message first.")
        last = users[-1]
        message = text_of(chat.history[last].get("content"))
        return replace(chat, message=message, history=chat.history[:last])

    def regenerate(self, data: dict[Any, Any]) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Answer the last user message again (with the current settings)."""
        key = self.session(self._form(data).get("session"))
        yield from self._answer(self.last_turn(self.request(data, message="")), key, True)

    def show_prompt(self, data: dict[Any, Any]) -> tuple[str, str]:
        """The exact text the model would read for this message, and its token count."""
        key = self.session(self._form(data).get("session"))
        chat = self.request(data)
        if not chat.message.strip() and chat.history:
            chat = self.last_turn(chat)  # the box is empty after sending: show what was sent
        with shown_to_user():
            prepared = self.service.prepare(chat, key)
        info = (
            f"**{len(prepared.ids)} tokens** of a {prepared.budget}-token prompt budget "
            f"(context {prepared.llm.config.block_size}, minus max new tokens, "
            "within the server cap)."
        )
        if prepared.notices:
            info += "  \n" + " ".join(prepared.notices)
        return prepared.text, info

    def chat_api(
        self,
        message: str,
        template: str = "chat",
        mode: str | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        num_beams: int | None = None,
        max_new_tokens: int | None = None,
        repetition_penalty: float | None = None,
        no_repeat_ngram_size: int | None = None,
        seed: int = -1,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        instruction: str = "",
        model: str = "default",
        retrieval: str = DEFAULT_MODE,
        session: str = "",
        logprobs: int = 0,
    ) -> Iterator[str]:
        """One question (no history) -> the streamed answer; RAG answers end with their sources
        and why each ranked. A decoding knob left out takes the template's default
        (`webapp.chat.template_defaults`); `retrieval` is RAG's mode (`ingest.MODES`).
        `session`: a key from `/new_session` (its documents); empty: the shared library only.
        `logprobs` N > 0 (off by default, like OpenAI's top_logprobs): each streamed item is
        then JSON {"text", "finish_reason", "sources", "logprobs"}, the last with every token's
        log-probability and its N best alternatives."""
        chat = ChatRequest(
            message=message,
            template=template,
            mode=mode,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            no_repeat_ngram_size=no_repeat_ngram_size,
            seed=seed,
            system_prompt=system_prompt,
            instruction=instruction,
            model=model,
            retrieval=retrieval,
        )
        key = self.session(session) if session else ""
        with shown_to_user():
            if logprobs:
                for item in chat_logprobs(self.service, chat, key, int(logprobs)):
                    yield json.dumps(item)
                return
            for reply in self.service.reply(chat, key):
                yield answer_markdown(reply)

    def template_changed(self, template: str) -> list[Any]:
        """The template's own fields, and its decoding defaults in the knobs (still editable;
        the reply length within the server's cap)."""
        defaults = template_defaults(template)
        cap = self.service.limits.max_new_tokens
        return [
            gr.update(interactive=template in ("zero-shot", "few-shot")),
            gr.update(interactive=template == "few-shot"),
            gr.update(value=min(defaults.max_new_tokens, cap)),
            gr.update(value=defaults.repetition_penalty),
            gr.update(value=defaults.no_repeat_ngram_size),
        ]

    # -- documents ---------------------------------------------------------------------------------

    def _library(self) -> Any:
        if self.service.library is None:
            raise gr.Error("Document upload is switched off on this server.")
        return self.service.library

    def documents(self, key: str) -> tuple[list[list[Any]], dict[str, Any]]:
        with shown_to_user():
            rows = self._library().documents(key)
        table = [
            [r.source, r.pages, r.chunks, "shared (read-only)" if r.shared else "yours"]
            for r in rows
        ]
        own = sorted({r.source for r in rows if not r.shared})
        return table, gr.update(choices=own, value=own[0] if own else None)

    def upload(
        self, files: list[FileData], session: str, progress: gr.Progress = PROGRESS
    ) -> tuple[str, list[list[Any]], Any, None]:
        """Index uploaded PDF/TXT/MD files; each rejected file gets its reason. `session`: the
        page's key (gradio_client: one from `/new_session`)."""
        batch = uploaded(files)
        try:
            key = self.session(session)
            library = self._library()
            if not batch:
                raise gr.Error("Choose one or more PDF, TXT or MD files to upload.")
            results = library.add_files(key, batch, lambda f, what: progress(f, desc=what))
        finally:
            discard([path for _, path in batch])
        lines = [
            ("✅ " if r.ok else "❌ ") + plain(r.message if r.ok else f"{r.name}: {r.message}")
            for r in results
        ]
        table, pick = self.documents(key)
        return "\n\n".join(lines), table, pick, None

    def delete(self, source: str, session: str) -> tuple[str, list[list[Any]], Any]:
        key = self.session(session)
        if not source:
            raise gr.Error("Pick one of your documents to delete.")
        with shown_to_user():
            removed = self._library().delete(key, source)
        table, pick = self.documents(key)
        return f"Deleted {plain(source)} ({removed} chunks).", table, pick

    def on_load(self, session: str) -> tuple[str, list[list[Any]], Any, Any]:
        """A page opens: its session key (kept when this server issued it, else a new one), its
        documents, and the models (checkpoints trained since start too)."""
        key = session if self.keys.verify(session) else self.keys.issue()
        models = gr.update(choices=self.service.models.choices())
        if self.service.library is None:
            return key, [], gr.update(choices=[]), models
        self.service.library.warm()
        return key, *self.documents(self.session(key)), models


REASONS = {
    "eos": "the model ended its turn",
    "length": "reached max new tokens",
    "stop_string": "hit a stop string",
    "cancelled": "stopped",
}


def notices(reply: Reply, number: int) -> str:
    """Under the chat: how answer `number` ended, and what the server changed (dropped turns)."""
    ended = REASONS.get(reply.finish_reason, reply.finish_reason)
    lines = [
        f"Answer {number} finished: {ended}, {reply.new_tokens} tokens from {plain(reply.model)}."
    ]
    if reply.path:  # the path the server picked for this machine (issue 21: say which)
        lines.append(f"⚙️ Ran as {plain(reply.path)}.")
    return "  \n".join(lines + [f"ℹ️ {plain(n)}" for n in reply.notices])


def mode_changed(mode: str) -> list[Any]:
    return [gr.update(interactive=knob in USES.get(mode, ())) for knob in KNOBS]
