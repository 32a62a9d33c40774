"""What the "Inside the model" tab and the API's logprobs compute, without Gradio: a chat reply
scored token by token, branches from any token, the decoding lab's side-by-side columns, and
per-token log-probabilities for `/chat`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from core.generate.engine import LLM
from core.generate.settings import GenerationSettings
from core.generate.trace import Trace, check_top_n, logprobs_json
from core.generate.traced import Run, branch, decode_traced, replay, run_traced
from webapp.chat import ChatInputError, ChatRequest, ChatService
from webapp.display import conversation
from webapp.evidence import not_covered

TOP_N = 10
QUOTES = '\n\n> "'  # where `with_quote` appends the evidence to a RAG answer


@dataclass
class Branch:
    """One version of the reply: `tokens` after the prompt, with their trace; a branch other than
    the first split from `parent` at `position` by taking `token` there."""

    id: int
    tokens: list[int]
    trace: Trace
    parent: int | None = None
    position: int = 0
    token: int | None = None


@dataclass
class Inspection:
    """A reply under the microscope: the prompt the model read, the settings it decoded with, the
    reply and its branches (branch 0 is the reply as shown), and the beam tree of a beam reply."""

    model: str  # the chat's model choice (`ModelRegistry`), e.g. "default"
    template: str
    prompt_ids: list[int]
    settings: GenerationSettings
    branches: list[Branch] = field(default_factory=list)
    beam: Trace | None = None

    def ids(self, branch_id: int) -> list[int]:
        """Prompt and reply of a branch: the sequence attention maps are drawn for."""
        return self.prompt_ids + self.branches[branch_id].tokens


def last_reply(history: Sequence[dict[str, Any]]) -> str:
    """The last answer in a chat history as the model wrote it (sources and quotes left out)."""
    turns = conversation(history)
    if not turns or turns[-1]["role"] != "assistant":
        raise ChatInputError("There is no reply to look inside yet: send a message first.")
    return turns[-1]["content"].split(QUOTES)[0].strip()


def inspect_reply(
    service: ChatService, chat: ChatRequest, reply: str, session: str = "", top_n: int = TOP_N
) -> Inspection:
    """Score `reply` to the request `chat` (its last user turn) as decoding saw it: the same
    prompt (retrieval included), the same processors, token by token (`core.generate.traced.
    replay`); a beam reply also gets its search tree, decoded again (beam search is
    deterministic)."""
    prepared = service.prepare(chat, session)
    if not prepared.covered:
        raise ChatInputError(
            "That answer was not written by the model: no source scored high enough, so the app "
            "said so itself. Ask something your documents cover."
        )
    llm, settings = prepared.llm, prepared.turn.settings
    tokens = llm.tokenizer.encode(reply)
    if not tokens:
        raise ChatInputError("The last reply is empty: there are no tokens to look at.")
    budget = llm.config.block_size - len(prepared.ids)
    tokens = tokens[:budget]
    trace = replay(llm.model, prepared.ids, tokens, settings, top_n)
    found = Inspection(
        chat.model, chat.template, list(prepared.ids), settings, [Branch(0, tokens, trace)]
    )
    if settings.mode == "beam":
        found.beam = run_traced(llm, prepared.ids, settings, top_n).trace
    return found


def add_branch(llm: LLM, found: Inspection, branch_id: int, position: int, token: int) -> Branch:
    """Continue branch `branch_id` from `position` with `token` instead of the token it has there;
    the new branch keeps that branch's first `position` tokens exactly."""
    if not 0 <= branch_id < len(found.branches):
        raise ChatInputError(f"There is no branch {branch_id}; pick one from the tree.")
    base = found.branches[branch_id]
    if not 0 <= position < len(base.tokens):
        raise ChatInputError(
            f"Pick a token from 0 to {len(base.tokens) - 1} of this branch, got {position}."
        )
    run = branch(llm, found.prompt_ids, base.tokens, position, token, found.settings)
    trace = replay(llm.model, found.prompt_ids, run.tokens, found.settings, base.trace.top_n)
    new = Branch(len(found.branches), run.tokens, trace, branch_id, position, int(token))
    found.branches.append(new)
    return new


# -- the decoding lab --------------------------------------------------------------------------

STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": dict(mode="greedy"),
    "beam 3": dict(mode="beam", num_beams=3),
    "beam 5": dict(mode="beam", num_beams=5),
    "sample T=0.3": dict(mode="sample", temperature=0.3, top_k=0, top_p=1.0),
    "sample T=0.7": dict(mode="sample", temperature=0.7, top_k=0, top_p=1.0),
    "sample T=1.2": dict(mode="sample", temperature=1.2, top_k=0, top_p=1.0),
    "top-k 10": dict(mode="sample", temperature=1.0, top_k=10, top_p=1.0),
    "top-p 0.9": dict(mode="sample", temperature=1.0, top_k=0, top_p=0.9),
}
# the notes' comparison: greedy, beam search, and random sampling at three temperatures
NOTES_PRESET = ["greedy", "beam 3", "sample T=0.3", "sample T=0.7", "sample T=1.2"]
MAX_COLUMNS = 6


@dataclass
class Column:
    """One strategy's reply so far, with its speed, log-probability and repetition rate."""

    name: str
    run: Run = field(default_factory=Run)
    done: bool = False

    @property
    def repetition(self) -> float:
        return repetition_rate(self.run.tokens)


def repetition_rate(tokens: Sequence[int], n: int = 3) -> float:
    """Share of the reply's n-grams (of tokens) that already occurred earlier in it."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def lab(
    llm: LLM,
    prompt_ids: Sequence[int],
    names: Sequence[str],
    base: GenerationSettings,
    budget_s: float | None = None,
) -> Iterator[list[Column]]:
    """Decode one prompt with several strategies, one step of each in turn (round robin), so every
    column streams at once from one thread; yields the columns after each round."""
    if not names:
        raise ChatInputError("Pick at least one decoding strategy for the lab.")
    if len(names) > MAX_COLUMNS:
        raise ChatInputError(f"The lab runs at most {MAX_COLUMNS} strategies at once.")
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        raise ChatInputError(f"Unknown strategy {unknown[0]!r}; pick from {', '.join(STRATEGIES)}.")
    columns = [Column(name) for name in names]
    runs = [
        decode_traced(llm, prompt_ids, replace(base, **STRATEGIES[name]), top_n=1) for name in names
    ]
    started = time.monotonic()
    while not all(c.done for c in columns):
        for column, steps in zip(columns, runs, strict=True):
            if column.done:
                continue
            column.run = next(steps, column.run)
            column.done = bool(column.run.finish_reason)
        yield columns
        if budget_s is not None and time.monotonic() - started > budget_s:
            return


# -- /chat logprobs ----------------------------------------------------------------------------


def chat_logprobs(
    service: ChatService, chat: ChatRequest, session: str, top_n: int
) -> Iterator[dict[str, Any]]:
    """`/chat` with `logprobs`: the answer decoded with its trace. Yields {"text",
    "finish_reason" (empty until done), "sources", "logprobs"} as the text grows; the last one's
    "logprobs" holds {"content": [...]}, per token OpenAI's shape (`logprobs_json`)."""
    try:
        check_top_n(top_n)
    except ValueError as err:
        raise ChatInputError(str(err)) from err
    prepared = service.prepare(chat, session)
    hits = prepared.sources
    sources = [{"number": n, "source": h.source, "page": h.page} for n, h in enumerate(hits, 1)]
    if not prepared.covered:
        yield {
            "text": not_covered(hits),
            "finish_reason": "eos",
            "sources": sources,
            "logprobs": {"content": []},
        }
        return
    llm = prepared.llm
    for run in decode_traced(llm, prepared.ids, prepared.turn.settings, top_n=top_n):
        done = bool(run.finish_reason)
        content = logprobs_json(run.trace.steps, llm.tokenizer, top_n) if done else None
        yield {
            "text": run.text,
            "finish_reason": run.finish_reason,
            "sources": sources,
            "logprobs": {"content": content} if done else None,
        }
