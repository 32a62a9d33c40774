"""The fused decoding step (`step.c`): one C call runs every block for one new token per row.

`plan(model)` describes each block's tensors to C (pointers, block types, shapes) once, and is
dropped when `set_layout` re-stores the matrices; `step` returns None wherever the model or the
call does not qualify, so the caller runs the per-module path.
"""

from __future__ import annotations

import ctypes

import torch
from torch import nn

from core.kernels.build import library
from core.kernels.ops import MAX_ROWS
from core.kernels.quant import TYPE_IDS, QuantLinear

DENSE_IDS = {torch.float32: 0, torch.bfloat16: 30}


class Part(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("rows", ctypes.c_int), ("data", ctypes.c_void_p)]


class Mat(ctypes.Structure):
    _fields_ = [
        ("n_parts", ctypes.c_int),
        ("N", ctypes.c_int),
        ("K", ctypes.c_int),
        ("bias", ctypes.c_void_p),
        ("parts", Part * 3),
    ]


class Layer(ctypes.Structure):
    _fields_ = [
        ("ln1", ctypes.c_void_p),
        ("ln2", ctypes.c_void_p),
        ("qkv", Mat),
        ("proj", Mat),
        ("fc", Mat),
        ("down", Mat),
    ]


class Dims(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int) for n in ("n_layer", "C", "nh", "nkv", "hd", "F")] + [
        ("eps", ctypes.c_float)
    ]


class Plan:
    """The C layer table of a model, and the tensors it points into (kept alive here)."""

    def __init__(self, model: nn.Module) -> None:
        c = model.config
        self.keep: list[torch.Tensor] = []
        self.layers = (Layer * c.n_layer)()
        for i, block in enumerate(model.blocks):
            layer = self.layers[i]
            layer.ln1, layer.ln2 = self._gain(block.ln_1), self._gain(block.ln_2)
            mats = (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj)
            for name, module in zip(("qkv", "proj", "fc", "down"), mats, strict=True):
                setattr(layer, name, self._mat(module))
        self.dims = Dims(c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.head_dim, c.ffn_hidden)
        self.dims.eps = c.norm_eps
        self.first = model.blocks[0].attn.qkv

    def _gain(self, norm: nn.Module) -> int:
        w = norm.weight.detach().float().contiguous()
        self.keep.append(w)
        return w.data_ptr()

    def _mat(self, module: nn.Module) -> Mat:
        mat = Mat()
        if isinstance(module, QuantLinear):
            parts = [(TYPE_IDS[t], d.shape[0], d) for t, d in module.packed.parts]
            mat.N, mat.K = module.packed.shape
        else:
            w = module.weight.detach()
            parts = [(DENSE_IDS[w.dtype], w.shape[0], w)]
            mat.N, mat.K = w.shape
        mat.n_parts = len(parts)
        for j, (kind, rows, data) in enumerate(parts):
            self.keep.append(data)
            mat.parts[j] = Part(kind, rows, data.data_ptr())
        if module.bias is not None:
            bias = module.bias.detach().float().contiguous()
            self.keep.append(bias)
            mat.bias = bias.data_ptr()
        return mat


def supported(model: nn.Module) -> bool:
    """Llama-family blocks whose matrices the step's kernels all take, stored row-major."""
    c = model.config
    if (c.norm, c.position, c.activation) != ("rmsnorm", "rope", "swiglu"):
        return False
    if c.attn_out_bias or c.mlp_bias:
        return False
    for block in model.blocks:
        for module in (block.attn.qkv, block.attn.proj, block.mlp.fc, block.mlp.proj):
            if isinstance(module, QuantLinear):
                if len(module.packed.parts) > 3:
                    return False
            elif module.weight.dtype not in DENSE_IDS or not module.weight.is_contiguous():
                return False
    return True


def step(model: nn.Module, idx: torch.Tensor, cache) -> torch.Tensor | None:
    """The hidden states (B, 1, C) after every block for one new token per row, the cache
    filled at its next position; None where the fused step does not apply."""
    lib = library()
    B, T = idx.shape
    if lib is None or T != 1 or B > MAX_ROWS or cache is None or model.training:
        return None
    if cache.k.dtype != torch.float32 or model.attn_impl != "sdpa" or torch.is_grad_enabled():
        return None
    if cache.length + 1 > model.config.block_size:  # the module path raises the context error
        return None
    plan = getattr(model, "_fused_plan", None)
    if plan is None or plan.first is not model.blocks[0].attn.qkv:
        if not supported(model):
            return None
        plan = model._fused_plan = Plan(model)
    pos = cache.room(1) - 1
    x = model.embed(idx).float().contiguous()  # (B, 1, C), updated in place
    cos, sin = model.rope_cos[pos].float(), model.rope_sin[pos].float()  # as the module path
    status = lib.decode_layers(
        plan.layers,
        ctypes.byref(plan.dims),
        x.data_ptr(),
        B,
        cos.data_ptr(),
        sin.data_ptr(),
        cache.k.data_ptr(),
        cache.v.data_ptr(),
        cache.max_len,
        pos,
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError("core.kernels: no memory for the decoding step's scratch")
    cache.length += 1
    return x
