"""Token-level decoding loops over a `Decoder` with a KV cache: generators of new token ids."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from core.model import Decoder


@torch.inference_mode()
def stream_tokens(
    model: Decoder, prompt_ids: Sequence[int], *, max_new_tokens: int,
    temperature: float = 0.0, stop_ids: set[int] | frozenset[int] = frozenset(),
    generator: torch.Generator | None = None,
) -> Iterator[int]:  # fmt: skip
    """Yield up to `max_new_tokens` ids; temperature 0 is greedy, above 0 samples softmax(z/T).

    A stop id ends the stream without being yielded.
    """
    if not prompt_ids:
        raise ValueError("the prompt is empty; give at least one token.")
    device = model.wte.weight.device
    budget = min(max_new_tokens, model.config.block_size - len(prompt_ids))
    cache = model.new_cache(1, len(prompt_ids) + max(budget, 0))
    idx = torch.tensor([list(prompt_ids)], device=device)  # (1, T)
    for _ in range(budget):
        logits = model(idx, cache=cache, last_only=True)[0, -1].float()  # (vocab,)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        else:
            token = int(logits.argmax())
        if token in stop_ids:
            return
        yield token
        idx = torch.tensor([[token]], device=device)  # (1, 1): only the new token goes through
