"""The seam between the model and our CPU decoding kernels: `prepare(model)` makes a loaded
`Decoder` decode fast on CPU, and is the only place the model meets them.

It swaps the classes of the model's modules for subclasses below (parameters, names and outputs
unchanged) that call `cpu.c` for decoding steps (a few rows) and fall back to torch otherwise;
keeps bf16 weights with fp32 activations (x86 CPUs without native bf16 emulate every bf16 op);
and, where the C kernel is off, stores fp32 matrices transposed, which torch's one-row matmuls
read fastest. Matrices kept in GGUF block types are `quant.QuantLinear` / `QuantEmbedding`
modules (built by `quantize.packed_model`), which `prepare` leaves as they are. A decoding step
of a Llama-family model runs all its blocks in one C call (`fused.step`). `describe` says which
path a model runs on, `choose` which path `LLM.load` takes by default. `core/layers.py` and
`core/model.py` stay the formulas.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from core.kernels import build, fused, ops, quant
from core.kernels.build import available, cpu_flags
from core.kernels.quant import QuantEmbedding, QuantLinear, exact
from core.layers import CausalSelfAttention, KVCache, RMSNorm
from core.model import Decoder

__all__ = [
    "available",
    "batched",
    "choose",
    "cpu_flags",
    "describe",
    "exact",
    "layout",
    "prepare",
    "set_layout",
    "status",
]


def status() -> str:
    """'on (avx512)' / 'on (avx2)', or why the C kernels are off on this machine."""
    build.library()
    return f"on ({build.isa})" if build.reason == "on" else build.reason


def choose(device: str | None, dtype: str | torch.dtype | None, quantize: str) -> tuple:
    """(quantize, dtype) for `load_model`: with quantize "auto" and no dtype, the fastest path
    that keeps the model's numbers on this machine. On CPU with our kernels a GGUF's block types
    stay packed (faster than its dequantized fp32 and 5x smaller); dense weights keep their
    stored precision, since bf16 (faster still, bench/README.md) would round them: it is
    `dtype="bf16"`. Without the kernels, or on a GPU, dense in the default dtype. An explicit
    dtype or quantize is taken as asked."""
    if quantize != "auto":
        return quantize, dtype
    if dtype not in (None, "auto") or (device is not None and torch.device(device).type != "cpu"):
        return "none", dtype
    if device is None and torch.cuda.is_available():
        return "none", dtype
    return ("gguf" if available() else "none"), dtype


def describe(model: nn.Module) -> str:
    """How `model`'s matrices are stored and what multiplies them, for the model status."""
    counts: dict[str, int] = {}
    for module in model.modules():
        if isinstance(module, QuantLinear | QuantEmbedding):
            for qtype, data in module.packed.parts:
                counts[qtype] = counts.get(qtype, 0) + data.numel()
        elif isinstance(module, nn.Linear | nn.Embedding):
            name = str(module.weight.dtype).removeprefix("torch.").replace("float", "fp")
            name = name.replace("bfp16", "bf16")
            counts[name] = (
                counts.get(name, 0) + module.weight.numel() * module.weight.element_size()
            )
    total = sum(counts.values()) or 1
    parts = [f"{k} {v / total:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])]
    where = f"our C kernels ({build.isa})" if available() else f"torch (C kernels: {status()})"
    packed = any(isinstance(m, QuantLinear) for m in model.modules())
    if packed and quant.prefill_dtype() == torch.bfloat16:
        where += ", prompts multiplied in bf16"
    return f"weights {' + '.join(parts)} of bytes, on {where}"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + b: the C kernel for a few fp32 rows, else torch (bf16 weights widened to x's)."""
    y = ops.linear(x, weight, bias)
    if y is not None:
        return y
    if weight.dtype != x.dtype:
        weight = weight.to(x.dtype)
        bias = bias.to(x.dtype) if bias is not None else None
    rows = x.numel() // x.shape[-1]
    if rows <= ops.MAX_ROWS and x.device.type == "cpu" and weight.is_contiguous():
        # (W x^T)^T streams a row-major W faster than F.linear does for a few rows
        y = torch.mm(weight, x.reshape(rows, -1).t()).t().contiguous()  # (rows, out)
        y = y.view(*x.shape[:-1], weight.shape[0])
        return y + bias if bias is not None else y
    return F.linear(x, weight, bias)


class FastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class FastRMSNorm(RMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.rms_norm(x, self.weight, self.eps)
        return y if y is not None else super().forward(x)


class FastAttention(CausalSelfAttention):
    def attend(
        self,
        qkv: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: KVCache | None,
        layer: int,
        impl: str,
    ) -> torch.Tensor:
        if cache is not None and qkv.shape[1] == 1 and impl == "sdpa":  # one C call per step
            y = ops.attend_one(qkv, rope, cache, layer, self.n_head, self.n_kv_head)
            if y is not None:
                return y
        return super().attend(qkv, rope, cache, layer, impl)


class FastDecoder(Decoder):
    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        last_only: bool = False,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        with self.turns:
            x = fused.step(self, idx, cache) if select is None else None  # one C call: all blocks
            if x is None:
                return self._forward(idx, cache, last_only, select)
            return self.output(self.ln_f(x))  # (B, 1, vocab)

    def activation_dtype(self) -> torch.dtype:
        p = self.wte.weight
        cpu = p.device.type == "cpu"
        return torch.float32 if cpu and p.dtype in (torch.bfloat16, torch.uint8) else p.dtype

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        return self.wte(idx) if isinstance(self.wte, QuantEmbedding) else super().embed(idx)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        head = self.wte if self.lm_head is None else self.lm_head
        if isinstance(head, QuantEmbedding):
            return head.logits(x)
        if isinstance(head, QuantLinear):
            with quant.exact():  # logits in fp32, as QuantEmbedding.logits
                return head(x)
        return linear(x, head.weight)

    def num_parameters(self) -> int:
        packed = [m for m in self.modules() if isinstance(m, QuantLinear | QuantEmbedding)]
        return super().num_parameters() + sum(m.packed.shape[0] * m.packed.shape[1] for m in packed)


SWAPS = {
    nn.Linear: FastLinear,
    RMSNorm: FastRMSNorm,
    CausalSelfAttention: FastAttention,
    Decoder: FastDecoder,
}


@torch.no_grad()
def prepare(model: Decoder) -> Decoder:
    """Make `model` (loaded, eval mode) decode fast on CPU, in place; other devices as they are."""
    if model.wte.weight.device.type != "cpu":
        return model
    # Denormal floats take a slow microcode path on x86 (bf16 element-wise ops above all), and
    # inference never needs values below 1e-38.
    torch.set_flush_denormal(True)
    for module in model.modules():
        fast = SWAPS.get(type(module))
        if fast is not None:
            module.__class__ = fast
    if model.wte.weight.dtype == torch.float32 and not available():
        set_layout(model, "transposed")
    return model


def layout(model: nn.Module) -> str:
    """Matrix storage: "row" (out, in), or "transposed" (in, out) behind an (out, in) view."""
    return "row" if model.wte.weight.is_contiguous() else "transposed"


@torch.no_grad()
def set_layout(model: nn.Module, new: str) -> nn.Module:
    """Re-store every matrix; values, names and shapes are unchanged."""
    if new not in ("row", "transposed"):
        raise ValueError(f"layout must be 'row' or 'transposed', got {new!r}.")
    if new == layout(model):
        return model
    model.__dict__.pop("_fused_plan", None)  # it points at the matrices about to be replaced
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            w = module.weight
            stored = w.contiguous() if new == "row" else w.t().contiguous().t()
            module.weight = nn.Parameter(stored, requires_grad=w.requires_grad)
    return model


@contextmanager
def batched(model: nn.Module) -> Iterator[None]:
    """Several rows per step (beam search) read row-major matrices fastest: switch meanwhile.

    Replies sharing the model nest: the first to enter switches, the last to leave switches back,
    each between forward passes (under the model's turns); the others' steps meanwhile read the
    row layout (same values, a little slower)."""
    state = model.__dict__
    with model.turns:
        if not state.get("_batched"):
            state["_batched_before"] = layout(model)
            set_layout(model, "row")
        state["_batched"] = state.get("_batched", 0) + 1
    try:
        yield
    finally:
        with model.turns:
            state["_batched"] -= 1
            if not state["_batched"]:
                set_layout(model, state.pop("_batched_before"))
