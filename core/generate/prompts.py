"""Prompt templates shared by chat and fine-tuning: zero-shot, few-shot, RAG, instructions.

Each template builds the *content* of one user message; the model's own chat template (applied by
`core.tokenizer.Tokenizer.apply_chat_template`) wraps it into the exact text the model reads, so a
fine-tuned model sees at training time the same layout it is asked in at chat time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class PromptError(ValueError):
    """A template cannot be filled; the message says which field to fix."""


@dataclass(frozen=True)
class Source:
    """One retrieved passage, numbered as the answer should cite it: [1], [2], ..."""

    number: int
    text: str
    source: str
    page: int | None = None

    @property
    def label(self) -> str:
        return f"{self.source}, page {self.page}" if self.page else self.source


# One line a 135M model follows: answer briefly, cite, and say so when the sources do not answer.
RAG_INSTRUCTION = (
    "Answer the question in one or two sentences using only the sources, and cite the source "
    "number like [1]. If the sources do not answer it, say: The documents do not cover this."
)
NOT_COVERED = "The documents do not cover this."
DEFAULT_SYSTEM = "You are a helpful assistant. Answer briefly and accurately."


def _required(value: str, field: str) -> str:
    value = (value or "").strip()
    if not value:
        raise PromptError(f"the {field} is empty; type something to continue.")
    return value


def instruction(instruction: str, input: str = "") -> str:
    """Alpaca-style content: the instruction, then the input when there is one."""
    text = _required(instruction, "instruction")
    return f"{text}\n\nInput:\n{input.strip()}" if input and input.strip() else text


def zero_shot(task: str, input: str) -> str:
    """An instruction applied to one input, with no examples."""
    return instruction(task, _required(input, "input"))


def few_shot(task: str, examples: Sequence[tuple[str, str]], input: str) -> str:
    """The instruction, then solved examples, then the new input left for the model to answer."""
    lines = [_required(task, "instruction"), ""]
    for i, (example_in, example_out) in enumerate(examples, 1):
        if not str(example_in).strip() or not str(example_out).strip():
            raise PromptError(f"example {i} needs both an input and an output.")
        lines += [f"Input: {str(example_in).strip()}", f"Output: {str(example_out).strip()}", ""]
    lines += [f"Input: {_required(input, 'input')}", "Output:"]
    return "\n".join(lines)


def rag(question: str, sources: Sequence[Source], quote: Source | None = None) -> str:
    """The question, the numbered sources, the sentence that answers it (`quote`, from source
    `quote.number`) when one was found, then the instruction and the question again: a small
    model reads the question before the sources and answers right after it."""
    question = _required(question, "question")
    if not sources:
        return question
    blocks = [f"[{s.number}] ({s.label})\n{s.text.strip()}" for s in sources]
    parts = [f"Question: {question}", "Sources:\n" + "\n\n".join(blocks)]
    if quote is not None:
        parts.append(f'The most relevant sentence, from [{quote.number}]: "{quote.text.strip()}"')
    parts += [RAG_INSTRUCTION, f"Question: {question}"]
    return "\n\n".join(parts)


def chat_messages(
    message: str, history: Sequence[dict[str, Any]] = (), system: str = ""
) -> list[dict[str, str]]:
    """System prompt (if any) + earlier user/assistant turns + the new user message."""
    turns = [{"role": "system", "content": system.strip()}] if system and system.strip() else []
    for turn in history:
        content = str(turn.get("content") or "")
        if turn.get("role") in ("user", "assistant") and content.strip():
            turns.append({"role": turn["role"], "content": content})
    return [*turns, {"role": "user", "content": _required(message, "message")}]


def render(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = True
) -> str:
    """The exact text the model reads for `messages` (its own chat template)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
