"""Matrices kept in GGUF block types (`core.weights.Packed`) as model modules, on `quant.c`.

`QuantLinear` and `QuantEmbedding` stand in for `nn.Linear` and `nn.Embedding`. A decoding step (at
most `ops.MAX_ROWS` rows, one token each) and a prompt of at most `PROMPT_ROWS` tokens multiply by
the packed blocks directly; longer prompts dequantize a slice of rows at a time (in C) and run
torch's GEMM on it, so no dense copy of the model is ever held. That GEMM is bf16 where the CPU
multiplies bf16 natively (`prefill_dtype`): 2-3x torch's fp32 there, at bf16's rounding of the
prompt's activations (the decoding steps stay exact). Without the C kernels the blocks are
dequantized by gguf's reference code on every call: slow, but the same numbers (the path tests force
with SCRATCHGPT_KERNELS=0).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from core.kernels.build import cpu_flags, library
from core.kernels.ops import MAX_ROWS
from core.weights import Packed

TYPE_IDS = {"Q4_0": 2, "Q4_1": 3, "Q8_0": 8, "Q4_K": 12, "Q6_K": 14}  # ggml's numbering
CHUNK = 1 << 22  # weights dequantized at once for prefill: 16 MiB of fp32, in the caches
PROMPT_ROWS = 4  # measured crossover (bench/README.md); decoding steps' rows stay on the kernel


PREFILL_CHOICES = ("auto", "bf16", "fp32")


def prefill_dtype() -> torch.dtype:
    """The precision of prefill's GEMM: SCRATCHGPT_PREFILL=bf16 / fp32, or (auto) bf16 where the
    CPU has AVX512-BF16 or AMX-BF16 and fp32 elsewhere (emulated bf16 is slower than fp32)."""
    wanted = os.environ.get("SCRATCHGPT_PREFILL", "auto").strip().lower() or "auto"
    if wanted not in PREFILL_CHOICES:
        raise ValueError(
            f"SCRATCHGPT_PREFILL={wanted!r} is none of {', '.join(PREFILL_CHOICES)}; unset it "
            "to let the CPU decide"
        )
    if wanted == "auto":
        native = {"avx512_bf16", "amx_bf16"} & cpu_flags()
        return torch.bfloat16 if native else torch.float32
    return torch.bfloat16 if wanted == "bf16" else torch.float32


def dequantize_part(
    qtype: str,
    data: torch.Tensor,
    k: int,
    rows: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    threads: int = 0,
):
    """Rows of one packed part as fp32 (or rounded to bf16): all, or those at `rows` (int64);
    on `threads` of our pool (0: torch's count)."""
    lib = library()
    if lib is None:
        picked = data if rows is None else data[rows]
        return Packed.of(qtype, picked.numpy(), k).dequantize().to(dtype)
    n = data.shape[0] if rows is None else rows.numel()
    out = torch.empty(n, k, dtype=dtype)
    idx = None if rows is None else rows.contiguous()
    unpack = lib.dequant_rows_bf16 if dtype == torch.bfloat16 else lib.dequant_rows
    status = unpack(
        TYPE_IDS[qtype],
        data.data_ptr(),
        None if idx is None else idx.data_ptr(),
        out.data_ptr(),
        n,
        k,
        threads or torch.get_num_threads(),
    )
    if status:
        raise MemoryError("core.kernels: no memory to unpack a row")
    return out


_exact = threading.local()


@contextmanager
def exact() -> Iterator[None]:
    """Products as decoding steps get them, for every shape: fp32 sums, the blocks' kernel up to
    MAX_ROWS rows (a replayed reply's scores, the LM head's logits)."""
    before = getattr(_exact, "on", False)
    _exact.on = True
    try:
        yield
    finally:
        _exact.on = before


def linear(x: torch.Tensor, packed: Packed, bias: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 x (..., K) @ W^T + bias for a packed W (N, K)."""
    N, K = packed.shape
    rows = x.numel() // K
    # the blocks' kernel costs about a decoding step per row (compute-bound), the GEMM a fixed
    # unpacking plus little per row: a prompt of more than PROMPT_ROWS tokens takes the GEMM
    prompt = x.dim() >= 2 and x.shape[-2] > 1
    precise = getattr(_exact, "on", False)
    kernel = rows <= MAX_ROWS and (precise or not (prompt and rows > PROMPT_ROWS))
    x2 = x.reshape(rows, K).float().contiguous()
    y = torch.empty(rows, N)
    lib = library()
    threads, col = torch.get_num_threads(), 0
    xs = None  # x as prefill's GEMM takes it
    for qtype, data in packed.parts:
        n = data.shape[0]
        if lib is not None and kernel:  # a decoding step: straight from the blocks
            status = lib.linear_q(
                TYPE_IDS[qtype],
                x2.data_ptr(),
                data.data_ptr(),
                None if bias is None else bias.data_ptr() + 4 * col,
                y.data_ptr() + 4 * col,
                rows,
                n,
                K,
                N,
                threads,
            )
            if status:
                raise MemoryError("core.kernels: no memory to unpack a row")
        else:  # prefill: GEMM on dequantized slices of rows
            if xs is None:  # the torch fallback's decoding steps stay fp32, as the kernel's do
                xs = x2.to(torch.float32 if kernel or precise else prefill_dtype())
            step = max(1, CHUNK // K)
            for start in range(0, n, step):
                part = torch.arange(start, min(n, start + step))
                # one thread: torch's OpenMP team spins between GEMMs and a second thread of
                # ours would share a core with it (2-core VM: 1 thread 10-20% faster end to end)
                w = dequantize_part(qtype, data, K, None if step >= n else part, xs.dtype, 1)
                y[:, col + start : col + start + w.shape[0]] = xs @ w.t()
            if bias is not None:
                y[:, col : col + n] += bias[col : col + n]
        col += n
    return y.view(*x.shape[:-1], N)


class QuantLinear(nn.Module):
    """y = x W^T + b with W kept packed; an inference-only stand-in for `nn.Linear`."""

    def __init__(self, packed: Packed, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.packed = packed
        self.out_features, self.in_features = packed.shape
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        types = "+".join(qtype for qtype, _ in self.packed.parts)
        return f"in_features={self.in_features}, out_features={self.out_features}, {types}"


class QuantEmbedding(nn.Module):
    """Rows of a packed table by token id; also the tied LM head (`logits`)."""

    def __init__(self, packed: Packed) -> None:
        super().__init__()
        self.packed = packed
        self.num_embeddings, self.embedding_dim = packed.shape
        # the blocks, under the name code asks for the model's device (`model.wte.weight`)
        self.register_buffer("weight", packed.parts[0][1], persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        flat = idx.reshape(-1).long()
        out = torch.empty(flat.numel(), self.embedding_dim)
        start = 0
        for qtype, data in self.packed.parts:
            hit = (flat >= start) & (flat < start + data.shape[0])
            if hit.any():
                out[hit] = dequantize_part(qtype, data, self.embedding_dim, flat[hit] - start)
            start += data.shape[0]
        return out.view(*idx.shape, self.embedding_dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with exact():  # bf16 logits would tie many tokens (their step is 1/16 at 10)
            return linear(x, self.packed)
