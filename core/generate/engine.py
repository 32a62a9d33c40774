"""`LLM`: a loaded model and its tokenizer; fit a prompt once, then stream `Piece`s from it.

messages -> `LLM.fit_prompt` (render + tokenize once) -> `Prompt` -> `LLM.start` -> `Generation`
(decoding, detokenizing, stop strings) -> `Piece`s whose texts concatenate to the reply.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from core import kernels
from core.generate.decode import beam_search, stream_tokens
from core.generate.logits import SettingsError
from core.generate.prefix import PromptCache
from core.generate.settings import GenerationSettings
from core.load import load_model
from core.model import Decoder

Messages = list[dict[str, str]] | str


@dataclass(frozen=True)
class Prompt:
    """The token ids the model reads, and what fitting them to the budget changed."""

    ids: list[int]
    budget: int
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Piece:
    """A step of a reply: `text` is new final text (the pieces concatenate to the reply);
    beam search adds `preview`, its current best continuation past that text, which may change."""

    text: str
    preview: str = ""


@dataclass
class LLM:
    """A loaded model with its tokenizer, ready to generate."""

    model: Decoder
    tokenizer: Any
    name: str
    max_new_tokens_cap: int = 2048  # server-side: no request may ask for more
    max_beams: int = 8
    path: str = ""  # how the weights are stored and multiplied (`kernels.describe`)
    # recent replies' KV caches: the next turn of a chat prefills only its new tokens
    prompts: PromptCache = field(default_factory=PromptCache, repr=False)

    @classmethod
    def load(
        cls,
        source: str | Path = "default",
        *,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        quantize: str = "auto",
    ) -> LLM:
        """Load `default`, a .gguf, a checkpoint, an HF dir or a hub id, ready to decode.

        `quantize="auto"` without a dtype takes the fastest faithful path on this machine
        (`kernels.choose`); otherwise see `core.load.load_model`."""
        quantize, dtype = kernels.choose(device, dtype, quantize)
        model, tokenizer, name = load_model(source, device=device, dtype=dtype, quantize=quantize)
        model = kernels.prepare(model)
        return cls(model=model, tokenizer=tokenizer, name=name, path=kernels.describe(model))

    @property
    def description(self) -> str:
        """The model and its path, for the model status: e.g. name, weight types, kernels."""
        return f"{self.name} ({self.path})" if self.path else self.name

    @property
    def config(self) -> Any:
        return self.model.config

    def render(self, messages: Messages) -> str:
        """A chat (list of role/content dicts) through the model's template; a string as is."""
        if isinstance(messages, str):
            return messages
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def prompt_budget(self, max_new_tokens: int, max_prompt_tokens: int | None = None) -> int:
        """Tokens a prompt may use: the context left after the reply, within a server's cap."""
        budget = self.config.block_size - max_new_tokens
        return budget if max_prompt_tokens is None else min(budget, max_prompt_tokens)

    def fit_prompt(
        self, messages: Messages, max_new_tokens: int, max_prompt_tokens: int | None = None
    ) -> Prompt:
        """Prompt ids that leave room for the reply: drop the oldest turns (never the system
        prompt or the latest message) until they fit; the notices say what was dropped.

        `max_prompt_tokens` is a server's own cap on the prompt, below the model's context."""
        budget = self.prompt_budget(max_new_tokens, max_prompt_tokens)
        if isinstance(messages, str):
            if not messages.strip():
                raise SettingsError("the prompt is empty; type something to continue.")
            ids = self.tokenizer.encode(messages)
            if len(ids) > budget:
                raise SettingsError(_too_long(len(ids), max_new_tokens, budget))
            return Prompt(ids, budget)
        if not messages or not str(messages[-1].get("content", "")).strip():
            raise SettingsError("the last message is empty; type something to continue.")
        system = messages[:1] if messages[0].get("role") == "system" else []
        turns = messages[len(system) :]
        # one encoding of the whole chat gives each turn's length: dropping the oldest turns is
        # then a sum, not a re-encoding per dropped turn (quadratic in a long history)
        ids, ends = self.tokenizer.encode_chat(system + turns)
        starts = [0, *ends[:-1]]
        sizes = [end - start for start, end in zip(starts, ends, strict=True)][len(system) :]
        total, dropped = len(ids), 0
        while total > budget and dropped < len(turns) - 1:
            total, dropped = total - sizes[dropped], dropped + 1
        if dropped:  # once more with the turns kept: the template's edges may differ by a token
            ids, _ = self.tokenizer.encode_chat(system + turns[dropped:])
            while len(ids) > budget and dropped < len(turns) - 1:
                dropped += 1
                ids, _ = self.tokenizer.encode_chat(system + turns[dropped:])
        if len(ids) > budget:
            raise SettingsError(_too_long(len(ids), max_new_tokens, budget))
        if not dropped:
            return Prompt(ids, budget)
        notice = f"Dropped the {dropped} oldest message(s) to fit the {budget}-token prompt budget."
        return Prompt(ids, budget, (notice,))

    def settings(
        self, settings: GenerationSettings | None = None, **overrides: Any
    ) -> GenerationSettings:
        """The defaults or `settings`, with `overrides` applied, checked against this LLM's caps."""
        settings = replace(settings or GenerationSettings(), **overrides)
        settings.validate(max_new_tokens_cap=self.max_new_tokens_cap, max_beams=self.max_beams)
        return settings

    def start(
        self,
        prompt: Prompt,
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        conversation: str | None = None,
    ) -> Generation:
        """Decode from an already fitted prompt with already validated settings. With a
        `conversation` (the app: the session), the prompt starts from that conversation's cached
        prefix and the reply's cache is kept for its next turn (`core.generate.prefix`)."""
        return Generation(self, prompt, settings, cancel, conversation)

    def stream(
        self,
        messages: Messages,
        settings: GenerationSettings | None = None,
        *,
        cancel: threading.Event | None = None,
        max_prompt_tokens: int | None = None,
        conversation: str | None = None,
        **overrides: Any,
    ) -> Generation:
        """Start a reply: iterate the result for `Piece`s (their texts concatenate to the reply).

        Settings can be overridden by keyword, e.g. `stream(msgs, mode="beam", num_beams=3)`;
        `conversation` as in `start`.
        """
        settings = self.settings(settings, **overrides)
        prompt = self.fit_prompt(messages, settings.max_new_tokens, max_prompt_tokens)
        return self.start(prompt, settings, cancel, conversation)

    def generate(
        self, messages: Messages, settings: GenerationSettings | None = None, **overrides: Any
    ) -> str:
        """The whole reply as one string."""
        return "".join(piece.text for piece in self.stream(messages, settings, **overrides))


def _too_long(n_prompt: int, n_new: int, budget: int) -> str:
    return (
        f"the prompt has {n_prompt} tokens, over its budget of {budget} (the context left after "
        f"max_new_tokens {n_new}, or the server's prompt cap). "
        "Shorten the prompt or lower max_new_tokens."
    )


def _holdback(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters might be the start of a stop string (not shown yet)."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)


class Generation:
    """One reply in progress. Iterating yields `Piece`s; afterwards `text`, `finish_reason`
    ("eos", "length", "stop_string", "cancelled") and `new_tokens` are set."""

    def __init__(
        self,
        llm: LLM,
        prompt: Prompt,
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
        conversation: str | None = None,
    ) -> None:
        self.llm, self.settings, self.cancel = llm, settings, cancel
        self.conversation = conversation
        self.prompt = prompt
        self.text, self.finish_reason = "", ""
        self.new_tokens = 0
        self._started = False

    @property
    def notices(self) -> tuple[str, ...]:
        return self.prompt.notices

    def __iter__(self) -> Iterator[Piece]:
        if self._started:
            raise RuntimeError("a Generation can be iterated only once.")
        self._started = True
        if self.settings.mode == "beam":
            yield from self._beam()
        else:
            yield from self._tokens()

    def _decode(self, ids: list[int]) -> str:
        return self.llm.tokenizer.decode(ids, skip_special_tokens=True)

    def _cancelled(self) -> bool:
        if self.cancel is not None and self.cancel.is_set():
            self.finish_reason = "cancelled"
            return True
        return False

    def _tokens(self) -> Iterator[Piece]:
        s, model = self.settings, self.llm.model
        generator = None
        if s.seed is not None:
            generator = torch.Generator(device=model.wte.weight.device).manual_seed(s.seed)
        tokens = stream_tokens(
            model,
            self.prompt.ids,
            max_new_tokens=s.max_new_tokens,
            stop_ids=self.llm.tokenizer.stop_token_ids,
            generator=generator,
            prompts=None if self.conversation is None else self.llm.prompts,
            owner=self.conversation or "",
            **s.token_knobs(),
        )
        # Text of ids[:settled] is final (it ended on a whole character); only the tail is
        # re-decoded per token, and stop strings are searched only past what was already shown
        # (held-back text keeps any stop string's start out of it).
        ids: list[int] = []
        settled, settled_text, full = 0, "", ""
        self.finish_reason = "eos"
        for token in tokens:
            ids.append(token)
            self.new_tokens = len(ids)
            full = settled_text + self._decode(ids[settled:])
            if full.endswith("\ufffd"):  # a multi-byte character is still incomplete: wait
                continue
            settled, settled_text = len(ids), full
            hits = [i for i in (full.find(stop, len(self.text)) for stop in s.stop) if i >= 0]
            if hits:
                yield from self._emit(full[: min(hits)])
                self.finish_reason = "stop_string"
                return
            yield from self._emit(full[: len(full) - _holdback(full, s.stop)])
            if self._cancelled():
                return
        if len(ids) >= s.max_new_tokens:
            self.finish_reason = "length"
        # Cut off mid-character by the token budget: drop the incomplete bytes, not show U+FFFD.
        yield from self._emit(full.rstrip("\ufffd"))

    def _emit(self, text: str, preview: str = "") -> Iterator[Piece]:
        """The piece that takes the shown text to `text` (nothing when it adds nothing)."""
        new = text[len(self.text) :] if text.startswith(self.text) else ""
        self.text += new
        if new or preview:
            yield Piece(new, preview)

    def _beam(self) -> Iterator[Piece]:
        s, tok = self.settings, self.llm.tokenizer
        stream = beam_search(
            self.llm.model,
            self.prompt.ids,
            num_beams=s.num_beams,
            max_new_tokens=s.max_new_tokens,
            length_penalty=s.length_penalty,
            early_stopping=s.early_stopping,
            eos_ids=sorted(tok.stop_token_ids),
            repetition_penalty=s.repetition_penalty,
            no_repeat_ngram_size=s.no_repeat_ngram_size,
            penalize_prompt=s.penalize_prompt,
        )
        self.finish_reason = "eos"
        with kernels.batched(self.llm.model):
            while True:
                try:
                    update = next(stream)
                except StopIteration as stop:
                    result = stop.value
                    break
                stable = self._decode(update.tokens[: update.stable]).rstrip("\ufffd")
                best = self._decode(update.tokens)
                preview = best[len(stable) :] if best.startswith(stable) else best
                yield from self._emit(stable, preview)
                if self._cancelled():
                    return
        best = [t for t in result.best if t not in tok.stop_token_ids]
        self.new_tokens = len(result.best)
        if len(best) == len(result.best) and len(best) >= s.max_new_tokens:
            self.finish_reason = "length"
        final = self._decode(best).rstrip("\ufffd")
        hits = [i for i in (final.find(stop) for stop in s.stop) if i >= 0]
        if hits:
            final, self.finish_reason = final[: min(hits)], "stop_string"
        yield from self._emit(final)
