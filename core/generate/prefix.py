"""`PromptCache`: the KV caches of recent replies, so that a prompt starting with one of them
prefills only what is new.

The next turn of a chat repeats the whole conversation so far (system prompt, earlier messages,
the last reply) and adds one message; without this every turn prefilled all of it again.
`stream_tokens(..., prompts=cache)` takes the entry sharing the longest prefix with its prompt,
prefills the rest, and puts the cache back when the reply ends, stopped or not. The same prompt
again (a regenerated answer) starts from the logits the entry kept, so it decodes exactly as the
first time did; a prompt that extends an entry is prefilled in another split, so at a near-tie
its greedy tokens may differ from a fresh prefill's. Entries belong to an owner (the app: a
session) and a prompt starts only from its own owner's: one conversation's answers never
depend on another's, and no one can time whether someone else sent a prompt. Each entry serves
one reply at a time (taken out while in use); the least recently used go when the entries'
bytes pass `max_bytes`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from core.layers import KVCache
from core.model import Decoder

MIN_REUSE = 16  # shorter shared prefixes are not worth a cache copy
DEFAULT_MB = 64  # SmolLM2-135M: ~46 KB a position, so ~1,400 positions of conversation


@dataclass
class Entry:
    owner: str
    ids: list[int]  # the tokens the cache holds, in order
    cache: KVCache
    logits: dict[int, torch.Tensor]  # n -> (1, vocab): the raw scores after ids[:n]

    @property
    def nbytes(self) -> int:
        scores = sum(t.nbytes for t in self.logits.values())
        return self.cache.k.nbytes + self.cache.v.nbytes + scores


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def configured_mb() -> float:
    """SCRATCHGPT_PROMPT_CACHE_MB (default 64; 0 turns the cache off), or a ValueError that
    says what is wrong with it."""
    raw = os.environ.get("SCRATCHGPT_PROMPT_CACHE_MB", str(DEFAULT_MB)).strip()
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < float("inf"):
        raise ValueError(
            f"SCRATCHGPT_PROMPT_CACHE_MB={raw!r} is not a size in megabytes; give a number such "
            f"as {DEFAULT_MB}, or 0 to turn the prompt cache off."
        )
    return mb


class PromptCache:
    """Recent replies' KV caches for one model (all entries come from the same weights)."""

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is None:
            max_bytes = int(configured_mb() * 2**20)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: list[Entry] = []  # most recently used first
        self.reused = 0  # positions not prefilled again, over this cache's life

    def __reduce__(self):  # a copied model's cache starts empty
        return (PromptCache, (self.max_bytes,))

    def take(
        self, model: Decoder, ids: Sequence[int], room: int, owner: str = ""
    ) -> tuple[KVCache, int, torch.Tensor | None]:
        """(a cache with room for `room` positions, how many of `ids` it holds, the scores after
        all of `ids` where an entry kept them, else None). The entry is removed while in use."""
        with self._lock:
            best, held, scores = None, 0, None
            for entry in (e for e in self._entries if e.owner == owner):
                n = common_prefix(entry.ids, ids)
                whole = n == len(ids) and n in entry.logits
                use = n if whole else min(n, len(ids) - 1)  # else the last position is redone
                if use > held:
                    best, held, scores = entry, use, entry.logits[n] if whole else None
            if best is None or held < min(MIN_REUSE, len(ids)):
                return model.new_cache(1, room), 0, None
            self._entries.remove(best)
            self.reused += held
        cache = best.cache
        if cache.max_len < room:  # the new reply needs more room: copy the prefix over
            bigger = model.new_cache(1, room)
            bigger.k[..., :held, :] = cache.k[..., :held, :]
            bigger.v[..., :held, :] = cache.v[..., :held, :]
            cache = bigger
        cache.length = held
        return cache, held, scores

    def put(
        self,
        ids: Sequence[int],
        cache: KVCache,
        logits: dict[int, torch.Tensor],
        owner: str = "",
    ) -> None:
        """Keep `cache` (holding `ids`; `logits[n]` the raw scores after ids[:n]) for `owner`."""
        if cache.length != len(ids) or not ids or cache.k.shape[1] != 1:
            return
        entry = Entry(owner, list(ids), cache, logits)
        if entry.nbytes > self.max_bytes:
            return
        with self._lock:
            self._entries.insert(0, entry)
            while sum(e.nbytes for e in self._entries) > self.max_bytes:
                self._entries.pop()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
