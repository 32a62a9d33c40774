"""Logits processors: repetition penalty, no-repeat n-gram, top-k, temperature, top-p, and drawing
the next token.

Each processor maps `(input_ids (B, T), scores (B, V)) -> scores (B, V)`, validates its setting in
`__init__`, and matches the same-named `transformers` processor. `build_processors` chains them in
transformers' order: repetition penalty -> no-repeat n-gram -> top-k -> temperature -> top-p.
Temperature 0 means greedy; decoding handles it by mode (`is_greedy`), not by a processor.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Protocol

import torch


class SettingsError(ValueError):
    """A generation setting out of range; the message says the allowed range and the value given."""


class LogitsProcessor(Protocol):
    """Anything that maps (input_ids (B, T) long, scores (B, V) float) to new scores (B, V)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor: ...


def _real(name: str, value: object, allowed: str) -> float:
    """`value` as a finite float, or SettingsError naming `allowed`; bools are not numbers here."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise SettingsError(f"{name} must be a number {allowed}, got {value!r}.")
    return float(value)


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0  # beyond them logits / T overflow to inf or nan


def _check_temperature(temperature: object) -> float:
    allowed = f"0 (greedy) or from {MIN_TEMPERATURE} to {MAX_TEMPERATURE:g}"
    t = _real("temperature", temperature, allowed)
    if t != 0 and not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE:
        raise SettingsError(f"temperature must be {allowed}, got {temperature!r}.")
    return t


def _check_top_k(top_k: object) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, Integral) or top_k < 0:
        raise SettingsError(f"top_k must be a whole number >= 0 (0 turns it off), got {top_k!r}.")
    return int(top_k)


def _check_top_p(top_p: object) -> float:
    p = _real("top_p", top_p, "in (0, 1]")
    if not 0 < p <= 1:
        raise SettingsError(f"top_p must be in (0, 1], got {top_p!r}.")
    return p


def _check_penalty(penalty: object) -> float:
    allowed = "> 0 (1.0 turns it off)"
    value = _real("repetition_penalty", penalty, allowed)
    if value <= 0:
        raise SettingsError(f"repetition_penalty must be a number {allowed}, got {penalty!r}.")
    return value


def _check_ngram(size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, Integral) or size < 0:
        raise SettingsError(
            f"no_repeat_ngram_size must be a whole number >= 0 (0 turns it off; 3 forbids "
            f"repeating any 3 tokens in a row), got {size!r}."
        )
    return int(size)


class RepetitionPenalty:
    """Seen tokens: negative scores are multiplied by the penalty, others divided."""

    def __init__(self, penalty: float):
        self.penalty = _check_penalty(penalty)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        B, V = scores.shape
        # a spare column absorbs ids >= V (an embedding larger than the head), as transformers does
        seen = torch.zeros(B, V + 1, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, input_ids.clamp(max=V), True)  # (B, V + 1)
        x = scores.float()
        penalized = torch.where(x < 0, x * self.penalty, x / self.penalty)
        return torch.where(seen[:, :V], penalized, x).to(scores.dtype)  # (B, V)


class NoRepeatNGram:
    """Ban every token that would complete an n-gram already in the row (prompt included)."""

    def __init__(self, n: int):
        self.n = _check_ngram(n)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        n, (B, T), V = self.n, input_ids.shape, scores.size(-1)
        if n == 0 or n > T:
            return scores
        # Only an n-gram starting with the last n - 1 tokens can be completed next: match that one
        # prefix against every window (vectorised, O(T n) per step, no table to keep in sync).
        prefix = input_ids[:, T - n + 1 :]  # (B, n - 1)
        windows = input_ids.unfold(1, n, 1)  # (B, T - n + 1, n)
        hit = (windows[..., :-1] == prefix[:, None]).all(-1)  # (B, T - n + 1)
        # misses and ids >= V (an embedding larger than the head) land in a spare column
        target = torch.where(hit, windows[..., -1].clamp(max=V), V)  # (B, T - n + 1)
        banned = torch.zeros(B, V + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, target, True)  # (B, V + 1)
        return scores.masked_fill(banned[:, :V], float("-inf"))


class TopK:
    """Keep the k highest scores, plus every token tied with the k-th; 0 or k >= V is a no-op."""

    def __init__(self, top_k: int):
        self.top_k = _check_top_k(top_k)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.top_k == 0 or self.top_k >= scores.size(-1):
            return scores
        kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]  # (B, 1)
        return scores.masked_fill(scores < kth, float("-inf"))


class Temperature:
    """Divide scores by the temperature (> 0); below 1 sharpens, above 1 flattens."""

    def __init__(self, temperature: float):
        t = _check_temperature(temperature)
        if t == 0:
            raise SettingsError(
                "temperature must be > 0 for sampling, got 0; temperature 0 means greedy decoding, "
                "so use greedy mode (is_greedy) instead of a Temperature processor."
            )
        self.temperature = t

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return (scores.float() / self.temperature).to(scores.dtype)


class TopP:
    """Nucleus: keep the smallest set of highest-probability tokens whose probability reaches p."""

    def __init__(self, top_p: float):
        self.top_p = _check_top_p(top_p)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.top_p == 1.0:
            return scores
        # ascending sort, as transformers does, so ties at the boundary break the same way
        sorted_scores, order = torch.sort(scores.float(), dim=-1)  # (B, V)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V), mass at or below each token
        # drop a token when the tokens above it already hold p of the mass; always keep the top one
        drop_sorted = cum <= 1 - self.top_p
        drop_sorted[:, -1] = False
        drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
        return scores.masked_fill(drop, float("-inf"))


class Processors(list):
    """A list of processors applied in order."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for processor in self:
            scores = processor(input_ids, scores)
        return scores


def is_greedy(temperature: float, top_k: int) -> bool:
    """True when the settings leave one choice: temperature 0 or top_k 1 (both validated)."""
    return _check_temperature(temperature) == 0 or _check_top_k(top_k) == 1


def build_processors(
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
) -> Processors:
    """Validate every setting, then chain the ones that change anything.

    Order (transformers' `_get_logits_processor`): repetition penalty -> no-repeat n-gram -> top-k
    -> temperature -> top-p. With temperature 0 (greedy) only the first two remain: greedy takes
    the argmax, which the others cannot change.
    """
    temperature = _check_temperature(temperature)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    penalty, ngram = _check_penalty(repetition_penalty), _check_ngram(no_repeat_ngram_size)
    processors = Processors()
    if penalty != 1.0:
        processors.append(RepetitionPenalty(penalty))
    if ngram > 0:
        processors.append(NoRepeatNGram(ngram))
    if temperature == 0:
        return processors
    if top_k > 0:
        processors.append(TopK(top_k))
    if temperature != 1.0:
        processors.append(Temperature(temperature))
    if top_p < 1.0:
        processors.append(TopP(top_p))
    return processors


def sample_next(scores: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row from softmax(scores (B, V)) -> (B,) long; seeded by `generator`."""
    probs = scores.float().softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
