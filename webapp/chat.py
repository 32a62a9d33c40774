"""Chat logic without Gradio: a request (message, history, template, decoding settings) ->
the exact prompt -> a stream of the growing reply with its sources.

One pass: `check` (message and settings, once) -> retrieval (`webapp.documents.Library`, RAG only)
-> template (`core.generate.prompts`) -> `LLM.fit_prompt` (tokenized once: the ids "show prompt"
displays) -> `LLM.start` -> pieces -> `Reply`. Everything a client sends is checked or clamped here.
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.generate import prompts
from core.generate.engine import LLM, Prompt
from core.generate.logits import SettingsError
from core.generate.prompts import PromptError, Source
from core.generate.settings import DEFAULTS, GenerationSettings
from ingest import Hit
from webapp.documents import Library
from webapp.models import ModelChoiceError, ModelRegistry

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
TEMPLATES = ("chat", "zero-shot", "few-shot", "rag")


class ChatInputError(ValueError):
    """A chat request the server refuses; the message is shown to the user."""


@dataclass(frozen=True)
class ChatLimits:
    """Server-side caps: whatever a client sends is clamped or refused here."""

    max_new_tokens: int = 512
    max_beams: int = 8
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
    mode: str = DEFAULTS.mode
    temperature: float = DEFAULTS.temperature
    top_k: int = DEFAULTS.top_k
    top_p: float = DEFAULTS.top_p
    num_beams: int = DEFAULTS.num_beams
    repetition_penalty: float = DEFAULTS.repetition_penalty
    max_new_tokens: int = DEFAULTS.max_new_tokens
    seed: int | None = DEFAULTS.seed


@dataclass(frozen=True)
class Turn:
    """A request that passed `ChatService.check`: its message and validated decoding settings."""

    request: ChatRequest
    message: str
    settings: GenerationSettings


@dataclass
class Prepared:
    """The exact prompt for a request: what "show prompt" displays and what the model reads."""

    turn: Turn
    llm: LLM
    messages: list[dict[str, str]]
    prompt: Prompt
    text: str
    sources: list[Hit] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        return self.prompt.ids

    @property
    def budget(self) -> int:
        return self.prompt.budget


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

    def __init__(
        self,
        models: ModelRegistry | None = None,
        library: Library | None = None,
        *,
        limits: ChatLimits | None = None,
    ) -> None:
        self.models = models or ModelRegistry()
        self.library = library
        self.limits = limits or ChatLimits()

    def settings(self, request: ChatRequest) -> GenerationSettings:
        """Decoding settings with the server's cap on `max_new_tokens` applied, validated."""
        try:
            budget = int(request.max_new_tokens)
            seed = None if request.seed is None or int(request.seed) < 0 else int(request.seed)
            settings = GenerationSettings(
                mode=request.mode,
                temperature=float(request.temperature),
                top_k=int(request.top_k),
                top_p=float(request.top_p),
                num_beams=int(request.num_beams),
                repetition_penalty=float(request.repetition_penalty),
                max_new_tokens=max(1, min(budget, self.limits.max_new_tokens)),
                seed=seed,
            )
        except (TypeError, ValueError) as err:
            raise ChatInputError(f"a decoding setting is not a number: {err}.") from err
        try:
            settings.validate(
                max_new_tokens_cap=self.limits.max_new_tokens, max_beams=self.limits.max_beams
            )
        except SettingsError as err:
            raise ChatInputError(str(err)) from err
        return settings

    def check(self, request: ChatRequest | Turn) -> Turn:
        """The message and settings, checked once; `ChatInputError` for what is refused."""
        if isinstance(request, Turn):
            return request
        message = text_of(request.message).strip()
        if not message:
            raise ChatInputError("Type a message first: the message is empty.")
        if len(message) > self.limits.max_message_chars:
            raise ChatInputError(
                f"The message has {len(message)} characters; "
                f"the limit is {self.limits.max_message_chars}."
            )
        if request.template not in TEMPLATES:
            raise ChatInputError(f"template must be one of {TEMPLATES}, got {request.template!r}.")
        if len(request.examples) > self.limits.max_examples:
            raise ChatInputError(f"Use at most {self.limits.max_examples} few-shot examples.")
        return Turn(request, message, self.settings(request))

    def _messages(self, turn: Turn, hits: list[Hit]) -> list[dict[str, str]]:
        request, message = turn.request, turn.message
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

    def retrieve(self, turn: Turn, session: str) -> list[Hit]:
        if turn.request.template != "rag":
            return []
        if self.library is None or not self.library.has_documents(session):
            raise ChatInputError(
                "RAG answers from your documents, and none are indexed yet: upload a PDF, TXT or "
                "MD file under Documents first, or switch the template to chat."
            )
        return self.library.search(session, turn.message, self.limits.rag_sources)

    def prepare(self, request: ChatRequest | Turn, session: str = "") -> Prepared:
        """The exact prompt (retrieval included) without generating: what "show prompt" shows
        and what `reply` decodes from."""
        turn = self.check(request)
        try:
            llm = self.models.get(turn.request.model)
            hits = self.retrieve(turn, session)
            prompt, messages = self._fit(llm, turn, hits)
        except (SettingsError, PromptError, ModelChoiceError) as err:
            raise ChatInputError(str(err)) from err
        text = llm.tokenizer.decode(prompt.ids, skip_special_tokens=False)
        return Prepared(turn, llm, messages, prompt, text, hits, list(prompt.notices))

    def _fit(self, llm: LLM, turn: Turn, hits: list[Hit]) -> tuple[Prompt, list[dict[str, str]]]:
        """Fit the prompt to the budget: old turns go first, then the lowest-ranked sources."""
        n_retrieved = len(hits)
        max_new_tokens = turn.settings.max_new_tokens
        while True:
            messages = self._messages(turn, hits)
            try:
                prompt = llm.fit_prompt(messages, max_new_tokens, self.limits.max_prompt_tokens)
            except SettingsError:
                if len(hits) <= 1:
                    raise
                del hits[-1]  # the caller's list: Prepared.sources must match the prompt
                continue
            if len(hits) < n_retrieved:
                notice = (
                    f"Used the {len(hits)} best of {n_retrieved} sources to fit the prompt budget."
                )
                prompt = replace(prompt, notices=(*prompt.notices, notice))
            return prompt, messages

    def reply(
        self,
        request: ChatRequest | Turn,
        session: str = "",
        cancel: threading.Event | None = None,
    ) -> Iterator[Reply]:
        """Yield the reply so far after each decoded piece (beam search: with its current best)."""
        turn = self.check(request)
        if (
            turn.request.template == "rag"
            and self.library is not None
            and self.library.indexing(session)
        ):
            yield Reply("⏳ Waiting for your uploads to finish indexing before answering…")
            if not self.library.wait_indexed(session, self.limits.index_wait_s):
                raise ChatInputError(
                    "Your documents are still being indexed; ask again in a minute."
                )
        prepared = self.prepare(turn, session)
        generation = prepared.llm.start(prepared.prompt, turn.settings, cancel)
        reply = Reply("", tuple(prepared.sources), tuple(prepared.notices), model=prepared.llm.name)
        text = ""
        for piece in generation:
            text += piece.text
            yield replace(reply, text=text + piece.preview)
        yield replace(
            reply,
            text=text or "(the model ended its turn without any text)",
            done=True,
            finish_reason=generation.finish_reason,
            new_tokens=generation.new_tokens,
        )
