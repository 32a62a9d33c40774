"""Chat logic without Gradio: a request (message, history, template, decoding settings) ->
the exact prompt -> a stream of the growing reply with its sources.

Flow: template (`core.prompts`) + retrieval (`webapp.documents.Library`, RAG only) -> messages ->
`core.engine.LLM.stream`. Everything a client sends is checked or clamped here.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core import prompts
from core.decode import GenerationSettings
from core.engine import LLM
from core.logits import SettingsError
from core.prompts import PromptError, Source
from ingest import Hit
from webapp.documents import Library
from webapp.models import ModelChoiceError, ModelRegistry

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
TEMPLATES = ("chat", "zero-shot", "few-shot", "rag")


class ChatInputError(ValueError):
    """A chat request the server refuses; the message is shown to the user."""


@dataclass(frozen=True)
class Limits:
    """Server-side caps: whatever a client sends is clamped or refused here."""

    max_new_tokens: int = 512
    max_message_chars: int = 8000
    max_prompt_tokens: int = 4096
    max_examples: int = 16
    rag_sources: int = 4
    index_wait_s: float = 600.0


@dataclass(frozen=True)
class ChatRequest:
    """One turn as the UI or API sends it."""

    message: str
    history: Sequence[dict[str, Any]] = ()
    template: str = "chat"
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = ""
    examples: Sequence[tuple[str, str]] = ()
    model: str = "default"
    mode: str = "greedy"
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 0.9
    num_beams: int = 3
    repetition_penalty: float = 1.0
    max_new_tokens: int = 256
    seed: int | None = None


@dataclass
class Prepared:
    """The exact prompt for a request: what "show prompt" displays and what the model reads."""

    llm: LLM
    messages: list[dict[str, str]]
    ids: list[int]
    text: str
    budget: int
    sources: list[Hit] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reply:
    """The reply so far; `sources` are the numbered passages its citations point at."""

    text: str
    sources: tuple[Hit, ...] = ()
    notices: tuple[str, ...] = ()
    done: bool = False
    finish_reason: str = ""  # once done: "eos", "length", "stop_string" or "cancelled"
    new_tokens: int = 0
    model: str = ""  # the name of the model that wrote it


def text_of(content: Any) -> str:
    """Gradio message content (a string, or a list of typed parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    return ""


SOURCES_HEADER = "\n\n---\n**Sources**\n\n"


def conversation(history: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """User/assistant turns of a chat history, without the source lists the UI appended."""
    turns = []
    for turn in history:
        if (turn.get("metadata") or {}).get("title"):  # UI-only messages (notices)
            continue
        content = text_of(turn.get("content")).split(SOURCES_HEADER)[0]
        if turn.get("role") in ("user", "assistant") and content.strip():
            turns.append({"role": turn["role"], "content": content})
    return turns


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")  # emphasis, code, links, headings, tables


def plain(text: str) -> str:
    """User-supplied text shown as literal text in Markdown: no HTML, links or formatting."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def sources_markdown(hits: Sequence[Hit], snippet_chars: int = 240) -> str:
    """The numbered source list shown beneath a RAG answer: file, page, score and a snippet."""
    lines = []
    for n, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())
        snippet = snippet[:snippet_chars] + ("…" if len(snippet) > snippet_chars else "")
        lines.append(
            f"**\\[{n}\\]** {plain(hit.source)}, page {hit.page} · score {hit.score:.2f}  \n"
            f"{plain(snippet)}"
        )
    return "\n\n".join(lines)


def answer_markdown(reply: Reply) -> str:
    """An answer as shown in the chat: the text, then its numbered sources beneath it."""
    if not reply.sources:
        return reply.text
    return reply.text + SOURCES_HEADER + sources_markdown(reply.sources)


class ChatService:
    """Models, documents and limits: turns a `ChatRequest` into a streamed `Reply`."""

    def __init__(self, models: ModelRegistry | None = None, library: Library | None = None,
                 *, limits: Limits | None = None) -> None:  # fmt: skip
        self.models = models or ModelRegistry()
        self.library = library
        self.limits = limits or Limits()

    def settings(self, request: ChatRequest) -> GenerationSettings:
        """Decoding settings with the server's cap on `max_new_tokens` applied."""
        try:
            budget = int(request.max_new_tokens)
            seed = None if request.seed is None or int(request.seed) < 0 else int(request.seed)
            return GenerationSettings(
                mode=request.mode, temperature=float(request.temperature),
                top_k=int(request.top_k), top_p=float(request.top_p),
                num_beams=int(request.num_beams), repetition_penalty=float(request.repetition_penalty),
                max_new_tokens=max(1, min(budget, self.limits.max_new_tokens)), seed=seed,
            )  # fmt: skip
        except (TypeError, ValueError) as err:
            raise ChatInputError(f"a decoding setting is not a number: {err}.") from err

    def check(self, request: ChatRequest) -> str:
        """The request's message, stripped; `ChatInputError` for what can be refused up front."""
        message = text_of(request.message).strip()
        if not message:
            raise ChatInputError("Type a message first: the message is empty.")
        if len(message) > self.limits.max_message_chars:
            raise ChatInputError(
                f"The message has {len(message)} characters; the limit is {self.limits.max_message_chars}."
            )
        if request.template not in TEMPLATES:
            raise ChatInputError(f"template must be one of {TEMPLATES}, got {request.template!r}.")
        if len(request.examples) > self.limits.max_examples:
            raise ChatInputError(f"Use at most {self.limits.max_examples} few-shot examples.")
        return message

    def _messages(
        self, request: ChatRequest, message: str, hits: list[Hit]
    ) -> list[dict[str, str]]:
        system, history = request.system_prompt, conversation(request.history)
        if request.template == "zero-shot":
            return prompts.chat_messages(
                prompts.zero_shot(request.instruction, message), (), system
            )
        if request.template == "few-shot":
            examples = [(a, b) for a, b in request.examples if str(a).strip() or str(b).strip()]
            content = prompts.few_shot(request.instruction, examples, message)
            return prompts.chat_messages(content, (), system)
        if request.template == "rag":
            sources = [Source(n, h.text, h.source, h.page) for n, h in enumerate(hits, 1)]
            return prompts.chat_messages(prompts.rag(message, sources), history, system)
        return prompts.chat_messages(message, history, system)

    def retrieve(self, request: ChatRequest, session: str, message: str) -> list[Hit]:
        if request.template != "rag":
            return []
        if self.library is None or not self.library.has_documents(session):
            raise ChatInputError(
                "RAG answers from your documents, and none are indexed yet: upload a PDF, TXT or MD "
                "file under Documents first, or switch the template to chat."
            )
        return self.library.search(session, message, self.limits.rag_sources)

    def prepare(self, request: ChatRequest, session: str = "") -> Prepared:
        """The exact prompt (retrieval included) without generating: for "show prompt"."""
        message = self.check(request)
        settings = self.settings(request)
        try:
            llm = self.models.get(request.model)
            hits = self.retrieve(request, session, message)
            ids, notices, messages = self._fit(llm, request, message, hits, settings.max_new_tokens)
        except (SettingsError, PromptError, ModelChoiceError) as err:
            raise ChatInputError(str(err)) from err
        budget = llm.prompt_budget(settings.max_new_tokens, self.limits.max_prompt_tokens)
        text = llm.tokenizer.decode(ids, skip_special_tokens=False)
        return Prepared(llm, messages, ids, text, budget, hits, notices)

    def _fit(self, llm: LLM, request: ChatRequest, message: str, hits: list[Hit],
             max_new_tokens: int) -> tuple[list[int], list[str], list[dict[str, str]]]:  # fmt: skip
        """Fit the prompt to the budget: old turns go first, then the lowest-ranked sources."""
        n_retrieved = len(hits)
        while True:
            messages = self._messages(request, message, hits)
            try:
                ids, notices = llm.fit_prompt(
                    messages, max_new_tokens, self.limits.max_prompt_tokens
                )
            except SettingsError:
                if len(hits) <= 1:
                    raise
                del hits[-1]  # the caller's list: Prepared.sources must match the prompt
                continue
            if len(hits) < n_retrieved:
                notices.append(
                    f"Used the {len(hits)} best of {n_retrieved} sources to fit the prompt budget."
                )
            return ids, notices, messages

    def reply(self, request: ChatRequest, session: str = "",
              cancel: threading.Event | None = None) -> Iterator[Reply]:  # fmt: skip
        """Yield the reply so far after each decoded piece (beam search: the current best)."""
        self.check(request)
        if (
            request.template == "rag"
            and self.library is not None
            and self.library.indexing(session)
        ):
            yield Reply("⏳ Waiting for your uploads to finish indexing before answering…")
            if not self.library.wait_indexed(session, self.limits.index_wait_s):
                raise ChatInputError(
                    "Your documents are still being indexed; ask again in a minute."
                )
        prepared = self.prepare(request, session)
        settings = self.settings(request)
        try:
            generation = prepared.llm.stream(
                prepared.messages, settings, cancel=cancel,
                max_prompt_tokens=self.limits.max_prompt_tokens,
            )  # fmt: skip
        except SettingsError as err:
            raise ChatInputError(str(err)) from err
        notes = tuple(dict.fromkeys([*prepared.notices, *generation.notices]))
        reply = Reply("", tuple(prepared.sources), notes, model=prepared.llm.name)
        for _ in generation:
            text = generation.best_text if settings.mode == "beam" else generation.text
            yield replace(reply, text=text)
        text = generation.text or "(the model ended its turn without any text)"
        yield replace(reply, text=text, done=True, finish_reason=generation.finish_reason,
                      new_tokens=generation.new_tokens)  # fmt: skip
