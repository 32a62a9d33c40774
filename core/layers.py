"""Transformer layers written from their formulas: norms, positions, attention, feed-forward."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ModelConfig

ATTN_IMPLS = ("sdpa", "explicit")


# --- normalisation -------------------------------------------------------------------------
class LayerNorm(nn.Module):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over the last dimension."""

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # statistics in fp32 whatever the activation dtype
        mean = h.mean(-1, keepdim=True)
        var = (h - mean).pow(2).mean(-1, keepdim=True)  # biased variance, as in the paper
        h = (h - mean) * torch.rsqrt(var + self.eps)
        y = h.to(x.dtype) * self.weight
        return y + self.bias if self.bias is not None else y


class RMSNorm(nn.Module):
    """y = gamma * x / sqrt(mean(x^2) + eps): LayerNorm without centring or beta."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm(config.n_embd, config.norm_eps)
    return LayerNorm(config.n_embd, config.norm_eps, bias=config.norm_bias)


# --- positions -----------------------------------------------------------------------------
def sinusoidal_table(n_pos: int, dim: int) -> torch.Tensor:
    """PE[k, 2i] = sin(k / 10000^(2i/d)), PE[k, 2i+1] = cos(k / 10000^(2i/d)); (n_pos, dim)."""
    # on the CPU even inside a meta-device build, as `rope_tables`
    k = torch.arange(n_pos, dtype=torch.float64, device="cpu")[:, None]  # (n_pos, 1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float64, device="cpu")[None, :]  # (1, dim/2)
    angle = k / torch.pow(10000.0, two_i / dim)  # (n_pos, dim/2)
    table = torch.empty(n_pos, dim, dtype=torch.float64, device="cpu")
    table[:, 0::2] = torch.sin(angle)
    table[:, 1::2] = torch.cos(angle)
    return table.float()


def rope_tables(n_pos: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of position * theta^(-2i/d), duplicated across both halves; each (n_pos, hd)."""
    # on the CPU even inside a meta-device build: meta maths runs Python decompositions (slow)
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / theta ** (steps / head_dim)
    freqs = torch.outer(torch.arange(n_pos, dtype=torch.float32, device="cpu"), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # (n_pos, hd)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x_i, x_{i+hd/2}) by the position's angle; x is (B, nh, T, hd)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# --- attention -----------------------------------------------------------------------------
class KVCache:
    """Pre-allocated keys and values for every layer; `length` tokens are filled."""

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        max_len: int,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.length = 0

    def room(self, n: int) -> int:
        """The position after `n` more tokens; ValueError when the cache cannot hold them."""
        end = self.length + n
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} were requested.")
        return end

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Store this step's (B, nkv, T, hd) keys/values; return everything cached so far."""
        end = self.room(k.shape[2])
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` (beam search picks which hypotheses survive)."""
        self.k = self.k.index_select(1, index)
        self.v = self.v.index_select(1, index)


def causal_mask(t_q: int, t_k: int, device: torch.device) -> torch.Tensor:
    """(t_q, t_k) boolean mask: query i (absolute position t_k - t_q + i) sees keys j <= that."""
    return torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)


def attention_explicit(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_head) + mask) V written out; q (B, nh, T, hd), k/v (B, nkv, S, hd)."""
    n_rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(n_rep, dim=1)  # (B, nh, S, hd): each kv head serves n_rep query heads
    v = v.repeat_interleave(n_rep, dim=1)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, S)
    mask = causal_mask(q.shape[2], k.shape[2], q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return weights @ v  # (B, nh, T, hd)


def attention_one_query(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention of one new token over the cache, the decoding step's case: no mask is needed,
    and query heads are grouped onto their kv head by a view instead of copying K and V."""
    B, nh, _, hd = q.shape
    n_kv = k.shape[1]
    q = q.view(B, n_kv, nh // n_kv, hd)  # (B, nkv, n_rep, hd): heads sharing a kv head side by side
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # (B, nkv, n_rep, S)
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return (weights @ v).view(B, nh, 1, hd)  # (B, nh, 1, hd)


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through torch's fused `scaled_dot_product_attention`."""
    t_q, t_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if t_q == 1:
        # torch's fused kernel is slow for a single query over a strided cache; two matmuls are not
        return attention_one_query(q, k, v)
    if t_q == t_k:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    mask = causal_mask(t_q, t_k, q.device)  # chunked prefill after a cached prefix
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    """Multi-head (or grouped-query) causal self-attention with output projection W_O."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = (
            config.n_head,
            config.n_kv_head,
            config.head_dim,
        )
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        # W_q, W_k, W_v stacked into one matrix: one matmul instead of three, same result.
        self.qkv = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=config.attn_bias)
        self.proj = nn.Linear(q_dim, config.n_embd, bias=config.attn_out_bias)  # W_O

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        impl: str,
    ) -> torch.Tensor:
        qkv = self.qkv(x)  # (B, T, (nh + 2 nkv) hd)
        return self.proj(self.attend(qkv, rope, cache, layer, impl))

    def attend(
        self,
        qkv: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        impl: str,
    ) -> torch.Tensor:
        """Projected q, k, v (B, T, (nh + 2 nkv) hd) -> attention output (B, T, nh hd)."""
        B, T, _ = qkv.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        heads = qkv.view(B, T, nh + 2 * nkv, hd).transpose(1, 2)  # (B, nh+2nkv, T, hd)
        if rope is not None:  # q and k heads rotated together: half the element-wise ops
            qk = apply_rope(heads[:, : nh + nkv], *rope)
            q, k, v = qk[:, :nh], qk[:, nh:], heads[:, nh + nkv :]
        else:
            q, k, v = heads.split((nh, nkv, nkv), dim=1)  # (B, nh, T, hd), (B, nkv, T, hd) x2
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hd), S = cached + T
        y = attention_explicit(q, k, v) if impl == "explicit" else attention_sdpa(q, k, v)
        return y.transpose(1, 2).reshape(B, T, nh * hd)  # heads side by side


# --- feed-forward --------------------------------------------------------------------------
class FeedForward(nn.Module):
    """Position-wise FFN: W2 act(W1 x), or SwiGLU's W2 (silu(W_gate x) * W_up x)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.activation = config.activation
        n_in = 2 * config.ffn_hidden if config.activation == "swiglu" else config.ffn_hidden
        self.fc = nn.Linear(config.n_embd, n_in, bias=config.mlp_bias)  # [W_gate; W_up] for swiglu
        self.proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.activation == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.activation == "relu":
            h = F.relu(h)
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h)


def residual_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with probability `p` while training; otherwise (or at p = 0) `x` untouched."""
    return F.dropout(x, p) if training and p else x


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = FeedForward(config)
        self.dropout = 0.0  # on each branch's output while training (`Decoder.dropout` sets it)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        impl: str,
    ) -> torch.Tensor:
        h = self.attn(self.ln_1(x), rope, cache, layer, impl)
        x = x + residual_dropout(h, self.dropout, self.training)
        h = self.mlp(self.ln_2(x))
        return x + residual_dropout(h, self.dropout, self.training)
