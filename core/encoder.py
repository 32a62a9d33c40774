"""`Encoder`: the bidirectional half of the transformer (BERT), built from our own layers.

Token + position + segment embeddings (or rotary positions), blocks whose self-attention sees
every real token (a padding mask, no causal mask), post-LN as BERT or pre-LN, and a masked-LM
head tied to the input embeddings. `sentence_embeddings` pools the hidden states as
sentence-transformers does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.config import ConfigError, ModelConfig
from core.layers import (
    CausalSelfAttention,
    FeedForward,
    LayerNorm,
    apply_rope,
    make_norm,
    residual_dropout,
    rope_tables,
)
from core.model import Decoder

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
Rope = tuple[torch.Tensor, torch.Tensor] | None  # cos and sin tables (T, hd) with rope positions


@dataclass
class EncoderConfig(ModelConfig):
    """A `ModelConfig` with what an encoder adds: segments, padding id, and where the norms sit."""

    type_vocab_size: int = 2  # segments A/B of a sentence pair
    pad_token_id: int = 0
    post_norm: bool = True  # BERT: norm(x + f(x)); False: pre-LN x + f(norm(x)) and a final norm

    def validate(self) -> None:
        super().validate()
        if self.position not in ("learned", "rope"):
            raise ConfigError(f"an encoder uses learned or rope positions, got {self.position!r}.")
        if self.norm != "layernorm" or self.activation == "swiglu":
            raise ConfigError("an encoder uses layernorm and a relu/gelu feed-forward.")
        if self.n_kv_head != self.n_head:
            raise ConfigError("an encoder uses multi-head attention (n_kv_head == n_head).")
        if self.type_vocab_size < 1 or not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError("type_vocab_size must be >= 1 and pad_token_id inside the vocab.")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> EncoderConfig:
        """`bert` (post-LN, BERT-base's shape) or `bert_preln`, with field overrides."""
        if name not in ENCODER_PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(ENCODER_PRESETS)}.")
        return cls.from_dict({**ENCODER_PRESETS[name], "name": name, **overrides})


_BERT = dict(
    vocab_size=30522,
    n_layer=12,
    n_head=12,
    n_embd=768,
    block_size=512,
    norm="layernorm",
    norm_eps=1e-12,
    position="learned",
    activation="gelu",
    attn_bias=True,
    attn_out_bias=True,
    mlp_bias=True,
    tied_embeddings=True,
)
ENCODER_PRESETS: dict[str, dict[str, Any]] = {
    "bert": _BERT,
    "bert_preln": {**_BERT, "post_norm": False, "norm_eps": 1e-5},
    # pre-LN with rotary positions: attending to a neighbour needs no learned position table
    "bert_rope": {**_BERT, "post_norm": False, "norm_eps": 1e-5, "position": "rope"},
}


class BidirectionalSelfAttention(CausalSelfAttention):
    """The decoder's attention projections, every query attending to every real key."""

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, rope: Rope) -> torch.Tensor:
        """x (B, T, C); key_mask (B, 1, 1, T) true at real tokens, None when none is padded."""
        B, T, _ = x.shape
        nh, hd = self.n_head, self.head_dim
        q, k, v = self.qkv(x).view(B, T, 3 * nh, hd).transpose(1, 2).split(nh, dim=1)  # (B,nh,T,hd)
        # softmax(Q K^T / sqrt(hd) + mask) V; padded keys get -inf, so no token reads padding
        if rope is not None:  # rotary positions: q . k depends on the tokens' distance
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, nh * hd))


class EncoderBlock(nn.Module):
    """Post-LN (BERT): x = norm(x + attn(x)); x = norm(x + ffn(x)). Pre-LN: norms inside."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.post_norm = config.post_norm
        self.attn = BidirectionalSelfAttention(config)
        self.ln_1 = make_norm(config)
        self.mlp = FeedForward(config)
        self.ln_2 = make_norm(config)
        self.dropout = 0.0

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None, rope: Rope) -> torch.Tensor:
        p, training = self.dropout, self.training
        if self.post_norm:
            x = self.ln_1(x + residual_dropout(self.attn(x, key_mask, rope), p, training))
            return self.ln_2(x + residual_dropout(self.mlp(x), p, training))
        x = x + residual_dropout(self.attn(self.ln_1(x), key_mask, rope), p, training)
        return x + residual_dropout(self.mlp(self.ln_2(x)), p, training)


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> act -> norm, then the tied embedding matrix plus a bias."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd)
        self.activation = config.activation
        self.norm = LayerNorm(config.n_embd, config.norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor, wte: torch.Tensor) -> torch.Tensor:
        h = self.dense(h)
        h = F.relu(h) if self.activation == "relu" else F.gelu(h, approximate=self._approx())
        return F.linear(self.norm(h), wte, self.bias)  # (..., vocab)

    def _approx(self) -> str:
        return "tanh" if self.activation == "gelu_tanh" else "none"


class Encoder(nn.Module):
    """Token ids (B, T) -> contextual hidden states (B, T, C) or masked-LM logits (B, T, vocab)."""

    def __init__(self, config: EncoderConfig, mlm_head: bool = True) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.wte = nn.Embedding(config.vocab_size, C)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, C)
        else:  # rope: no position embedding; attention rotates q and k instead
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.wtt = nn.Embedding(config.type_vocab_size, C)  # segment embeddings
        # post-LN normalises the summed embeddings; pre-LN instead normalises the last block's out
        self.ln_emb = make_norm(config) if config.post_norm else None
        self.blocks = nn.ModuleList(EncoderBlock(config) for _ in range(config.n_layer))
        self.ln_f = None if config.post_norm else make_norm(config)
        self.head = MLMHead(config) if mlm_head else None  # BertModel checkpoints have none
        self.apply(Decoder._init_weights)  # the decoder's init: N(0, 0.02) weights, zero biases
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    dropout = Decoder.dropout  # residual dropout while training, set on every block as there

    def hidden(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T), attention_mask (B, T) 1 at real tokens -> hidden states (B, T, C)."""
        _B, T = idx.shape
        if self.config.block_size < T:
            raise ValueError(f"{T} tokens exceed the encoder's {self.config.block_size}.")
        segments = torch.zeros_like(idx) if token_type_ids is None else token_type_ids
        x = self.wte(idx) + self.wtt(segments)
        rope = None
        if self.config.position == "learned":
            x = x + self.wpe(torch.arange(T, device=idx.device))
        else:
            rope = (self.rope_cos[:T].to(x.dtype), self.rope_sin[:T].to(x.dtype))
        if self.ln_emb is not None:
            x = self.ln_emb(x)
        x = residual_dropout(x, self.dropout, self.training)
        key_mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for block in self.blocks:
            x = block(x, key_mask, rope)
        return x if self.ln_f is None else self.ln_f(x)

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Masked-LM logits (B, T, vocab), or (N, vocab) at the N positions where the boolean
        (B, T) `select` is true (training scores only the masked tokens)."""
        if self.head is None:
            raise ValueError(
                "this encoder was loaded without an MLM head (a BertModel checkpoint)."
            )
        x = self.hidden(idx, attention_mask, token_type_ids)
        if select is not None:
            x = x[select]  # (N, C)
        return self.head(x, self.wte.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' hidden states: (B, T, C), (B, T) -> (B, C)."""
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@torch.inference_mode()
def sentence_embeddings(
    model: Encoder, idx: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """sentence-transformers' recipe: mean pooling over real tokens, then L2 normalisation."""
    pooled = mean_pool(model.hidden(idx, attention_mask), attention_mask)
    return F.normalize(pooled.float(), dim=-1)  # (B, C)
