"""The Gradio event functions behind `webapp.ui`: they turn component values into
`webapp.chat` calls and Gradio updates, and user errors into `gr.Error` messages.

The session's document collection is keyed on the server by the Gradio session; no input from
the client names it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

from ingest import DEFAULT_MODE
from webapp.chat import (
    DEFAULT_SYSTEM_PROMPT,
    ChatInputError,
    ChatRequest,
    ChatService,
    Reply,
    template_defaults,
)
from webapp.display import answer_markdown, plain, text_of
from webapp.documents import FileResult

# Which knobs each mode reads; the others are shown greyed out rather than silently ignored.
USES = {
    "greedy": {"repetition_penalty"},
    "sample": {"temperature", "top_k", "top_p", "seed", "repetition_penalty"},
    "beam": {"num_beams", "repetition_penalty"},
}
KNOBS = ("temperature", "top_k", "top_p", "num_beams", "seed", "repetition_penalty")


def session_key(request: gr.Request | None) -> str:
    """The Gradio session this request belongs to (set by the server's session handling)."""
    key = getattr(request, "session_hash", None)
    if not key:
        raise gr.Error("This request has no session; reload the page.")
    return str(key)


def uploaded(files: Any) -> list[tuple[str, bytes | None]]:
    """(name, bytes) of uploaded files, None where the file is gone (an upload cut short).

    Gradio's cached copy is removed once read, so nobody can download it afterwards."""
    out: list[tuple[str, bytes | None]] = []
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
        name = os.path.basename(original or path.name)
        try:
            out.append((name, path.read_bytes()))
        except OSError:
            out.append((name, None))
            continue
        path.unlink(missing_ok=True)
        if path.parent.name != "gradio" and not any(path.parent.iterdir()):
            shutil.rmtree(path.parent, ignore_errors=True)
    return out


PROGRESS = gr.Progress()  # Gradio injects a live tracker wherever this default appears


class Handlers:
    """The event functions, bound to one `ChatService`."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self.fields: dict[Any, str] = {}  # component -> ChatRequest field; set by the layout

    # -- chat --------------------------------------------------------------------------------------

    def request(self, data: dict[Any, Any], **changes: Any) -> ChatRequest:
        """A ChatRequest from the form (Gradio passes a set of inputs as {component: value})."""
        form = {self.fields[c]: v for c, v in data.items() if c in self.fields} | changes
        examples = [
            tuple(str(c or "") for c in row[:2])
            for row in form.pop("examples", None) or []
            if len(row) >= 2
        ]
        seed, history = form.pop("seed", None), form.pop("history", None) or []
        return ChatRequest(
            **form, history=history, examples=examples, seed=None if seed is None else int(seed)
        )

    def _stream(self, chat: ChatRequest, key: str) -> Iterator[Reply]:
        try:
            yield from self.service.reply(chat, key)
        except ChatInputError as err:
            raise gr.Error(str(err)) from err

    def _answer(
        self, chat: ChatRequest, key: str
    ) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Stream (textbox, chat, notice) states. A refused request leaves the chat as it was,
        puts the message back in the box and says why (nothing half-written stays behind)."""
        try:
            turn = self.service.check(chat)
        except ChatInputError as err:
            raise gr.Error(str(err)) from err
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
        except ChatInputError as err:
            yield chat.message, history, f"⚠️ {plain(str(err))}"
            raise gr.Error(str(err)) from err
        n = sum(turn.get("role") == "assistant" for turn in shown) + 1
        final = [*shown, {"role": "assistant", "content": answer_markdown(reply)}]
        yield "", final, notices(reply, n)

    def respond(
        self, data: dict[Any, Any], request: gr.Request
    ) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Stream an answer into the chat; the sources go beneath it."""
        yield from self._answer(self.request(data), session_key(request))

    @staticmethod
    def last_turn(chat: ChatRequest) -> ChatRequest:
        """The request behind the chat's last answer: its last user message and what came before."""
        users = [i for i, turn in enumerate(chat.history) if turn.get("role") == "user"]
        if not users:
            raise gr.Error("Nothing to regenerate yet: send a message first.")
        last = users[-1]
        message = text_of(chat.history[last].get("content"))
        return replace(chat, message=message, history=chat.history[:last])

    def regenerate(
        self, data: dict[Any, Any], request: gr.Request
    ) -> Iterator[tuple[str, list[dict[str, Any]], str]]:
        """Answer the last user message again (with the current settings)."""
        yield from self._answer(
            self.last_turn(self.request(data, message="")), session_key(request)
        )

    def show_prompt(self, data: dict[Any, Any], request: gr.Request) -> tuple[str, str]:
        """The exact text the model would read for this message, and its token count."""
        chat = self.request(data)
        if not chat.message.strip() and chat.history:
            chat = self.last_turn(chat)  # the box is empty after sending: show what was sent
        try:
            prepared = self.service.prepare(chat, session_key(request))
        except ChatInputError as err:
            raise gr.Error(str(err)) from err
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
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> Iterator[str]:
        """One question (no history) -> the streamed answer; RAG answers end with their sources
        and why each ranked. A decoding knob left out takes the template's default
        (`webapp.chat.template_defaults`); `retrieval` is RAG's mode (`ingest.MODES`)."""
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
        for reply in self._stream(chat, session_key(request)):
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
        rows = self._library().documents(key)
        table = [
            [r.source, r.pages, r.chunks, "shared (read-only)" if r.shared else "yours"]
            for r in rows
        ]
        own = sorted({r.source for r in rows if not r.shared})
        return table, gr.update(choices=own, value=own[0] if own else None)

    def upload(
        self, files: list[FileData], request: gr.Request, progress: gr.Progress = PROGRESS
    ) -> tuple[str, list[list[Any]], Any, None]:
        """Index uploaded PDF/TXT/MD files; each rejected file gets its reason."""
        key = session_key(request)
        library = self._library()
        batch = uploaded(files)
        if not batch:
            raise gr.Error("Choose one or more PDF, TXT or MD files to upload.")
        lost = [
            FileResult(name, False, "the upload did not arrive whole; upload it again.")
            for name, data in batch
            if data is None
        ]
        batch = [(name, data) for name, data in batch if data is not None]
        results = lost + library.add_files(key, batch, lambda f, what: progress(f, desc=what))
        lines = [
            ("✅ " if r.ok else "❌ ") + plain(r.message if r.ok else f"{r.name}: {r.message}")
            for r in results
        ]
        table, pick = self.documents(key)
        return "\n\n".join(lines), table, pick, None

    def delete(self, source: str, request: gr.Request) -> tuple[str, list[list[Any]], Any]:
        key = session_key(request)
        if not source:
            raise gr.Error("Pick one of your documents to delete.")
        try:
            removed = self._library().delete(key, source)
        except Exception as err:  # DocumentNotFoundError and store failures: say which
            raise gr.Error(str(err)) from err
        table, pick = self.documents(key)
        return f"Deleted {plain(source)} ({removed} chunks).", table, pick

    def on_load(self, request: gr.Request) -> tuple[list[list[Any]], Any, Any]:
        """A page opens: its documents, and the models (checkpoints trained since start too)."""
        models = gr.update(choices=self.service.models.choices())
        if self.service.library is None:
            return [], gr.update(choices=[]), models
        return (*self.documents(session_key(request)), models)


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
    return "  \n".join(lines + [f"ℹ️ {plain(n)}" for n in reply.notices])


def mode_changed(mode: str) -> list[Any]:
    return [gr.update(interactive=knob in USES.get(mode, ())) for knob in KNOBS]
