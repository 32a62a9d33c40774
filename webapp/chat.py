"""Chat logic without Gradio: a request (message, history, template, decoding settings) ->
the exact prompt -> a stream of the growing reply with its sources.

One pass: `check` (message and settings, once) -> retrieval (`webapp.documents.Library`, RAG only)
-> template (`core.generate.prompts`) -> `LLM.fit_prompt` (tokenized once: the ids "show prompt"
displays) -> `LLM.start` -> pieces -> `Reply`. Everything a client sends is checked or clamped here.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.generate import prompts
from core.generate.engine import LLM, Prompt
from core.generate.logits import SettingsError
from core.generate.prompts import PromptError, Source
from core.generate.settings import DEFAULTS, GenerationSettings
from ingest import DEFAULT_MODE, MODES, Hit, IngestError
from webapp.display import conversation, text_of
from webapp.documents import Library
from webapp.evidence import Evidence, excerpt, find_evidence, not_covered, with_quote
from webapp.models import ModelChoiceError, ModelRegistry

DEFAULT_SYSTEM_PROMPT = prompts.DEFAULT_SYSTEM
TEMPLATES = ("chat", "zero-shot", "few-shot", "rag")


def template_defaults(template: str) -> GenerationSettings:
    """Decoding defaults per template: RAG answers are short and may not loop."""
    return RAG_DEFAULTS if template == "rag" else DEFAULTS


# short answers that cannot loop (bench/rag_answers.py measures them)
RAG_DEFAULTS = replace(
    DEFAULTS,
    max_new_tokens=80,
    repetition_penalty=1.15,
    no_repeat_ngram_size=4,
    penalize_prompt=False,  # copying a sentence of the sources is what a grounded answer does
)


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
    # what a client sends beside its message: bounded, so one request cannot hold the model slot
    max_history_turns: int = 200
    max_history_chars: int = 200_000
    max_field_chars: int = 8000  # system prompt, instruction, each few-shot example
    rag_sources: int = 4
    rag_candidates: int = 32  # retrieved, then reranked by their best sentence to rag_sources
    rag_source_chars: int = 700  # each source is cut to the sentences around its best one
    # below this retrieval score the documents are taken not to answer (bench/rag_answers.py)
    rag_min_score: float = 0.45
    # a RAG question waits for its session's uploads: the page this long before it takes the
    # model slot (`Handlers.await_indexing`), and in the slot only briefly, then it is refused
    index_wait_s: float = 600.0
    index_wait_in_slot_s: float = 5.0


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
    retrieval: str = DEFAULT_MODE  # RAG: dense, keyword, hybrid or hybrid+rerank (ingest.MODES)
    # decoding knobs: None takes the template's default (`template_defaults`)
    mode: str | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    num_beams: int | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    max_new_tokens: int | None = None
    seed: int | None = None


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
    evidence: list[Evidence] = field(default_factory=list)
    covered: bool = True  # RAG: False when no source scores high enough to answer from

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
    evidence: tuple[Evidence, ...] = ()
    done: bool = False
    finish_reason: str = ""  # once done: "eos", "length", "stop_string" or "cancelled"
    new_tokens: int = 0
    model: str = ""  # the name of the model that wrote it
    path: str = ""  # how its weights are stored and multiplied (`LLM.path`)


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
        """The template's default settings with what the request sets, the server's cap on
        `max_new_tokens` applied, validated."""
        base = template_defaults(request.template)

        def knob(name: str, kind: type) -> Any:
            value = getattr(request, name)
            return getattr(base, name) if value is None else kind(value)

        try:
            seed = None if request.seed is None or int(request.seed) < 0 else int(request.seed)
            budget = knob("max_new_tokens", int)
            settings = replace(
                base,
                mode=knob("mode", str),
                temperature=knob("temperature", float),
                top_k=knob("top_k", int),
                top_p=knob("top_p", float),
                num_beams=knob("num_beams", int),
                repetition_penalty=knob("repetition_penalty", float),
                no_repeat_ngram_size=knob("no_repeat_ngram_size", int),
                max_new_tokens=max(1, min(budget, self.limits.max_new_tokens)),
                seed=seed,
            )
        except (TypeError, ValueError, OverflowError) as err:
            raise ChatInputError(f"a decoding setting is not a usable number: {err}.") from err
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
        self._check_sizes(request)
        return Turn(request, message, self.settings(request))

    def _check_sizes(self, request: ChatRequest) -> None:
        limits = self.limits
        if not isinstance(request.history, Sequence) or isinstance(request.history, str):
            raise ChatInputError("history must be a list of messages.")
        if len(request.history) > limits.max_history_turns:
            raise ChatInputError(
                f"The chat history has {len(request.history)} messages; the limit is "
                f"{limits.max_history_turns}. Clear the chat to go on."
            )
        chars = sum(len(text_of(t.get("content"))) for t in request.history if isinstance(t, dict))
        if chars > limits.max_history_chars:
            raise ChatInputError(
                f"The chat history has {chars} characters; the limit is "
                f"{limits.max_history_chars}. Clear the chat to go on."
            )
        fields = [("system prompt", request.system_prompt), ("instruction", request.instruction)]
        fields += [
            (f"few-shot example {i}", f"{a}{b}") for i, (a, b) in enumerate(request.examples, 1)
        ]
        for name, value in fields:
            if len(str(value or "")) > limits.max_field_chars:
                raise ChatInputError(
                    f"The {name} has {len(str(value))} characters; the limit is "
                    f"{limits.max_field_chars}."
                )

    def _messages(
        self, turn: Turn, hits: list[Hit], evidence: list[Evidence]
    ) -> list[dict[str, str]]:
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
            best: dict[int, str] = {}
            for e in evidence:
                best.setdefault(e.number, e.sentence)
            cut = self.limits.rag_source_chars
            sources = [
                Source(n, excerpt(h.text, best.get(n), cut), h.source, h.page)
                for n, h in enumerate(hits, 1)
            ]
            quote = evidence[0] if evidence else None
            quoted = quote and Source(quote.number, quote.sentence, quote.source, quote.page)
            return prompts.chat_messages(prompts.rag(message, sources, quoted), history, system)
        return prompts.chat_messages(message, history, system)

    def retrieve(self, turn: Turn, session: str) -> list[Hit]:
        """RAG: the `rag_sources` best pages in the request's retrieval mode (hybrid search and
        rerank over `rag_candidates` from each list by default), best first."""
        if turn.request.template != "rag":
            return []
        if turn.request.retrieval not in MODES:
            raise ChatInputError(
                f"retrieval must be one of {', '.join(MODES)}; got {turn.request.retrieval!r}."
            )
        try:
            if self.library is None or not self.library.has_documents(session):
                raise ChatInputError(
                    "RAG answers from your documents, and none are indexed yet: upload a PDF, "
                    "TXT or MD file under Documents first, or switch the template to chat."
                )
            return self.library.search(
                session,
                turn.message,
                self.limits.rag_sources,
                mode=turn.request.retrieval,
                candidates=self.limits.rag_candidates,
            )
        except IngestError as err:  # a query that cannot be searched (QueryError), a locked store
            raise ChatInputError(str(err)) from err

    def uploads_pending(self, template: str, session: str) -> list[str]:
        """RAG: this session's files still being indexed (a RAG question waits for them)."""
        if template != "rag" or self.library is None:
            return []
        return self.library.pending(session)

    def wait_for_uploads(self, template: str, session: str, timeout: float) -> None:
        """RAG: wait up to `timeout` s for this session's uploads to be indexed;
        `ChatInputError` naming the files still indexing when they take longer."""
        if self.uploads_pending(template, session) and not self.library.wait_indexed(
            session, timeout
        ):
            names = ", ".join(repr(n) for n in dict.fromkeys(self.library.pending(session)))
            raise ChatInputError(f"Still indexing {names}; ask again in a moment.")

    def prepare(self, request: ChatRequest | Turn, session: str = "") -> Prepared:
        """The exact prompt (retrieval included) without generating: what "show prompt" shows
        and what `reply` decodes from."""
        turn = self.check(request)
        try:
            llm, picked = self.models.for_template(turn.request.model, turn.request.template)
            hits = self.retrieve(turn, session)
            # the best cosine among the sources: hybrid order may put a lower one first
            rag, best = turn.request.template == "rag", max((h.score for h in hits), default=-1.0)
            covered = not rag or best >= self.limits.rag_min_score
            hits, evidence = self.ground(turn, hits, covered)
            prompt, messages = self._fit(llm, turn, hits, evidence)
            evidence = [e for e in evidence if e.number <= len(hits)]  # fitting may drop sources
        except (SettingsError, PromptError, ModelChoiceError) as err:
            raise ChatInputError(str(err)) from err
        text = llm.tokenizer.decode(prompt.ids, skip_special_tokens=False)
        notices = [*prompt.notices, *([picked] if picked else [])]
        if not covered:
            notices.append(
                f"No source scored {self.limits.rag_min_score:.2f} or more (best "
                f"{max(best, 0.0):.2f}): the answer says the documents do not cover this."
            )
        return Prepared(turn, llm, messages, prompt, text, hits, notices, evidence, covered)

    def ground(
        self, turn: Turn, hits: list[Hit], covered: bool
    ) -> tuple[list[Hit], list[Evidence]]:
        """RAG: the sources in retrieval's order, cut to `rag_sources`, and the two sentences among
        them that answer best (the library's embedder plus keywords) as evidence."""
        hits = hits[: self.limits.rag_sources]
        if not hits or not covered or self.library is None:
            return hits, []
        return hits, find_evidence(turn.message, hits, self.library.embedder.encode, k=2)

    def _fit(
        self, llm: LLM, turn: Turn, hits: list[Hit], evidence: list[Evidence]
    ) -> tuple[Prompt, list[dict[str, str]]]:
        """Fit the prompt to the budget: old turns go first, then the lowest-ranked sources."""
        n_retrieved = len(hits)
        max_new_tokens = turn.settings.max_new_tokens
        while True:
            kept = [e for e in evidence if e.number <= len(hits)]
            messages = self._messages(turn, hits, kept)
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
        template = turn.request.template
        if self.uploads_pending(template, session):  # in the model slot: only briefly
            yield Reply("⏳ Waiting for your uploads to finish indexing before answering…")
            self.wait_for_uploads(template, session, self.limits.index_wait_in_slot_s)
        prepared = self.prepare(turn, session)
        reply = Reply(
            "",
            tuple(prepared.sources),
            tuple(prepared.notices),
            tuple(prepared.evidence),
            model=prepared.llm.name,
            path=prepared.llm.path,
        )
        if not prepared.covered:
            yield replace(reply, text=not_covered(prepared.sources), done=True, finish_reason="eos")
            return
        # a session's next turn starts from its own cached conversation
        generation = prepared.llm.start(prepared.prompt, turn.settings, cancel, session or None)
        text = ""
        for piece in generation:
            text += piece.text
            yield replace(reply, text=text + piece.preview)
        text = text.strip() or "(the model ended its turn without any text)"
        yield replace(
            reply,
            text=with_quote(text, prepared.evidence),
            done=True,
            finish_reason=generation.finish_reason,
            new_tokens=generation.new_tokens,
        )
