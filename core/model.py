"""`Decoder`: token ids -> next-token logits, with an optional KV cache. No sampling, no I/O."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from core.config import ModelConfig
from core.layers import (
    ATTN_IMPLS,
    Block,
    KVCache,
    make_norm,
    residual_dropout,
    rope_tables,
    sinusoidal_table,
)
from core.turns import Turns


class NoInit(TorchFunctionMode):
    """`nn.init` initialisers as no-ops in this thread: on meta tensors they run torch's Python
    decompositions, whose first call imports torch._dynamo (~1.3 s of a first model load)."""

    SKIP = frozenset(
        getattr(nn.init, name)
        for name in ("normal_", "uniform_", "zeros_", "ones_", "kaiming_uniform_", "trunc_normal_")
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.SKIP:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **(kwargs or {}))


class ContextLengthError(ValueError):
    """More tokens than the model's context window."""


class Decoder(nn.Module):
    """A decoder-only transformer: embeddings + positions, n_layer blocks, final norm, LM head."""

    def __init__(self, config: ModelConfig, attn_impl: str = "sdpa") -> None:
        super().__init__()
        self.config = config
        self.attn_impl = attn_impl
        self.turns = Turns()  # threads sharing this model run their forward passes in turn
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # False while the first blocks are frozen: the input lookup then passes no gradient back,
        # so backward stops at the first trainable block (a tied head still trains, output side)
        self.embed_grad = True
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        elif config.position == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(config.block_size, config.n_embd), False)
        else:
            cos, sin = rope_tables(config.block_size, config.head_dim, config.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = make_norm(config)
        # Tied embeddings reuse wte's matrix as the output head; untied ones own a separate one.
        self.lm_head = (
            None
            if config.tied_embeddings
            else nn.Linear(config.n_embd, config.vocab_size, bias=False)
        )
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2's scaled init of residual projections
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @property
    def dropout(self) -> float:
        """Residual dropout while training (embeddings and each block's attention and MLP outputs,
        as in GPT-2): a training setting, not part of the architecture; eval mode ignores it."""
        return self.blocks[0].dropout if len(self.blocks) else 0.0

    @dropout.setter
    def dropout(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}.")
        for block in self.blocks:
            block.dropout = p

    @property
    def attn_impl(self) -> str:
        return self._attn_impl

    @attn_impl.setter
    def attn_impl(self, value: str) -> None:
        if value not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {value!r}.")
        self._attn_impl = value

    def activation_dtype(self) -> torch.dtype:
        """The dtype activations (and the KV cache) are computed in: the weights' own."""
        return self.wte.weight.dtype

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> KVCache:
        """An empty KV cache on this model's device, in its activation dtype."""
        p = self.wte.weight
        dtype = self.activation_dtype()
        return KVCache(
            self.config, batch_size, max_len or self.config.block_size, device=p.device, dtype=dtype
        )

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, vocab), or (B, 1, vocab) with `last_only`, or (N, vocab)
        at the N positions where the boolean (B, T) `select` is true (fine-tuning scores only
        the response tokens: the vocabulary projection skips the rest)."""
        with self.turns:
            return self._forward(idx, cache, last_only, select)

    def _forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None,
        last_only: bool,
        select: torch.Tensor | None,
    ) -> torch.Tensor:
        _B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ContextLengthError(
                f"{start + T} tokens exceed the model's context of {self.config.block_size}."
            )
        x = self.embed(idx).to(self.activation_dtype())  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        elif self.config.position == "sinusoidal":
            # Vaswani et al. scale embeddings by sqrt(d_model): with a 0.02-std init the unit-size
            # sinusoids otherwise drown the token signal and training sits at the unigram loss.
            x = x * math.sqrt(self.config.n_embd) + self.pe[start : start + T].to(x.dtype)
        else:
            rope = (
                self.rope_cos[start : start + T].to(x.dtype),
                self.rope_sin[start : start + T].to(x.dtype),
            )
        x = residual_dropout(x, self.dropout, self.training)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, self._attn_impl)
        if cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        elif select is not None:
            x = x[select]  # (N, C)
        return self.output(self.ln_f(x))  # (B, T, vocab)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings: rows of wte (B, T) -> (B, T, C)."""
        table = self.wte.weight if self.embed_grad else self.wte.weight.detach()
        return F.embedding(idx, table)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """The LM head: hidden states (..., C) -> logits (..., vocab), tied to wte or its own."""
        return F.linear(x, self.wte.weight if self.lm_head is None else self.lm_head.weight)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
