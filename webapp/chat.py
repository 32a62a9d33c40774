"""Chat logic without Gradio: history + settings -> a stream of the growing reply."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from core.engine import LLM
from core.logits import SettingsError

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."


class ChatInputError(ValueError):
    """A chat request the server refuses; the message is shown to the user."""


@dataclass(frozen=True)
class Limits:
    """Server-side caps: whatever a client sends is clamped or refused here."""

    max_new_tokens: int = 512
    max_message_chars: int = 8000


def text_of(content: Any) -> str:
    """Gradio message content (a string, or a list of typed parts) as plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(text_of(part) for part in content)
    return ""


class ChatService:
    """Holds one model, loaded on first use, and turns a chat turn into streamed text."""

    def __init__(self, source: str = "default", *, limits: Limits | None = None,
                 loader: Callable[[str], LLM] = LLM.load) -> None:  # fmt: skip
        self.source = source
        self.limits = limits or Limits()
        self._loader = loader
        self._llm: LLM | None = None
        self._lock = threading.Lock()

    @property
    def llm(self) -> LLM:
        with self._lock:  # two first requests must not load the model twice
            if self._llm is None:
                self._llm = self._loader(self.source)
            return self._llm

    def messages(
        self, message: str, history: list[dict[str, Any]], system_prompt: str
    ) -> list[dict[str, str]]:
        turns = (
            [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
        )
        for turn in history:
            if turn.get("role") in ("user", "assistant") and text_of(turn.get("content")).strip():
                turns.append({"role": turn["role"], "content": text_of(turn["content"])})
        return [*turns, {"role": "user", "content": message}]

    def reply(
        self, message: str, history: list[dict[str, Any]], *, system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        temperature: float = 0.0, max_new_tokens: int = 256, seed: int | None = None,
    ) -> Iterator[str]:  # fmt: skip
        """Yield the reply so far after each decoded piece (what a streaming chatbot shows)."""
        message = text_of(message).strip()
        if not message:
            raise ChatInputError("Type a message first: the message is empty.")
        if len(message) > self.limits.max_message_chars:
            raise ChatInputError(
                f"The message has {len(message)} characters; the limit is {self.limits.max_message_chars}."
            )
        budget = max(1, min(int(max_new_tokens), self.limits.max_new_tokens))
        text = ""
        try:
            generation = self.llm.stream(
                self.messages(message, history, system_prompt),
                mode="sample" if temperature > 0 else "greedy", temperature=temperature,
                top_k=0, top_p=1.0, max_new_tokens=budget, seed=seed,
            )  # fmt: skip
        except SettingsError as err:
            raise ChatInputError(str(err)) from err
        for piece in generation:
            text += piece
            yield text
        if not text:
            yield "(the model ended its turn without any text)"
