"""Attention weights per layer and head for a token sequence, within a memory bound.

softmax(Q K^T / sqrt(d_head) + causal mask), as `core.layers.attention_explicit` computes it, for
chosen query rows only: each layer's q, k are taken from its qkv projection during one forward
pass and reduced at once, so memory grows with (rows x sequence) per layer, never with
layers x heads x sequence^2 (30 x 9 x 2048^2 floats would be 4.5 GB for SmolLM2 at 2k tokens).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.layers import apply_rope
from core.model import Decoder

WINDOW = 128  # default square window: L x H x 128 x 128 floats (17.7 MB for SmolLM2)
MAX_WINDOW = 512


class AttentionWindowError(ValueError):
    """A requested window outside the sequence or over the memory bound."""


@dataclass(frozen=True)
class AttentionMaps:
    """weights[l, h, i, j]: how much query `queries[i]` attends to key `keys[j]` in layer l,
    head h; `earlier[l, h, i]` is its weight on keys before the window (each row's rest)."""

    weights: torch.Tensor  # (L, H, Q, K) float32
    earlier: torch.Tensor  # (L, H, Q)
    queries: range
    keys: range

    def head_average(self) -> torch.Tensor:
        return self.weights.mean(1)  # (L, Q, K)

    def layer_average(self) -> torch.Tensor:
        return self.weights.mean(0)  # (H, Q, K)

    @property
    def nbytes(self) -> int:
        return self.weights.nbytes + self.earlier.nbytes


def layer_weights(
    model: Decoder,
    qkv: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """One layer's attention weights (B, nh, len(rows), T) for query positions `rows` from its
    projected qkv (B, T, (nh + 2 nkv) hd): the rows of softmax(Q K^T / sqrt(hd) + mask)."""
    config = model.config
    B, T, _ = qkv.shape
    nh, nkv, hd = config.n_head, config.n_kv_head, config.head_dim
    heads = qkv.float().view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh+2nkv, T, hd)
    q, k = heads[:, :nh, rows], heads[:, nh : nh + nkv]  # (B, nh, Q, hd), (B, nkv, T, hd)
    if config.position == "rope":
        q = apply_rope(q, model.rope_cos[rows].float(), model.rope_sin[rows].float())
        k = apply_rope(k, model.rope_cos[:T].float(), model.rope_sin[:T].float())
    k = k.repeat_interleave(nh // nkv, dim=1)  # (B, nh, T, hd): each kv head serves its group
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(hd)  # (B, nh, Q, T)
    future = torch.arange(T, device=qkv.device)[None, :] > rows[:, None]  # (Q, T)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


@torch.inference_mode()
def _each_layer(
    model: Decoder,
    ids: Sequence[int],
    rows: torch.Tensor,
    keep: Callable[[int, torch.Tensor], None],
) -> None:
    """One forward pass over `ids`; `keep(layer, weights (nh, Q, T))` as each layer runs."""
    if not ids:
        raise AttentionWindowError("there are no tokens to show attention for.")
    if len(ids) > model.config.block_size:
        raise AttentionWindowError(
            f"{len(ids)} tokens exceed the model's context of {model.config.block_size}."
        )
    with model.turns:  # the hooks see only this pass, not another reply's step meanwhile
        handles = [
            block.attn.qkv.register_forward_hook(
                lambda _m, _inp, qkv, layer=i: keep(layer, layer_weights(model, qkv, rows)[0])
            )
            for i, block in enumerate(model.blocks)
        ]
        try:
            model(torch.tensor([list(ids)], device=model.wte.weight.device), last_only=True)
        finally:
            for handle in handles:
                handle.remove()


def attention_maps(
    model: Decoder,
    ids: Sequence[int],
    *,
    end: int | None = None,
    window: int = WINDOW,
) -> AttentionMaps:
    """Every layer's and head's weights among the `window` positions ending before `end`
    (default: the last ones): a square map, queries and keys alike, plus each row's weight
    on the keys before it. Result size: L x H x window x (window + 1) floats."""
    T = len(ids)
    if not T:
        raise AttentionWindowError("there are no tokens to show attention for.")
    end = T if end is None else end
    if not 1 <= window <= MAX_WINDOW:
        raise AttentionWindowError(
            f"the window must be from 1 to {MAX_WINDOW} tokens, got {window}."
        )
    if not 1 <= end <= T:
        raise AttentionWindowError(f"the window must end within the {T} tokens, got {end}.")
    span = range(max(0, end - window), end)
    rows = torch.arange(span.start, span.stop, device=model.wte.weight.device)
    config = model.config
    weights = torch.zeros(config.n_layer, config.n_head, len(span), len(span))
    earlier = torch.zeros(config.n_layer, config.n_head, len(span))

    def keep(layer: int, w: torch.Tensor) -> None:
        weights[layer] = w[..., span.start : span.stop].cpu()
        earlier[layer] = w[..., : span.start].sum(-1).cpu()

    _each_layer(model, ids, rows, keep)
    return AttentionMaps(weights, earlier, span, span)


def attention_to_context(
    model: Decoder, ids: Sequence[int], positions: Sequence[int]
) -> torch.Tensor:
    """(len(positions), T): each position's attention over every earlier token, averaged over
    layers and heads (which source tokens an answer token drew on). Memory: one layer's
    (heads x positions x T) at a time."""
    T = len(ids)
    if not positions or any(not 0 <= p < T for p in positions):
        raise AttentionWindowError(f"positions must be within the {T} tokens, got {positions}.")
    rows = torch.tensor(list(positions), device=model.wte.weight.device)
    total = torch.zeros(len(positions), T)

    def keep(_layer: int, w: torch.Tensor) -> None:
        total.add_(w.mean(0).cpu())

    _each_layer(model, ids, rows, keep)
    return total / model.config.n_layer
