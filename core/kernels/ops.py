"""ctypes wrappers of the kernels in `cpu.c`: each returns its result, or None where the kernel
does not apply (not CPU, more than `MAX_ROWS` rows, autograd needed, activations other than fp32,
weights other than fp32/bf16, a non-contiguous W, or no kernel on this machine), so the caller runs
the torch version (`core/layers.py` holds the reference formulas)."""

from __future__ import annotations

import torch

from core.kernels.build import library

MAX_ROWS = 16  # prefill and training run torch's GEMM


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """fp32 x (..., K) @ weight (N, K)^T + bias, with fp32 or bf16 weight (and bias), as fp32
    from the kernel; None where it does not apply."""
    lib = library()
    if lib is None or x.device.type != "cpu" or x.dtype != torch.float32:
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16):
        return None
    K = x.shape[-1]
    rows = x.numel() // K if K else 0
    if not 0 < rows <= MAX_ROWS or not weight.is_contiguous() or weight.shape[1] != K:
        return None
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return None
    if bias is not None and (bias.dtype != weight.dtype or not bias.is_contiguous()):
        return None
    x = x.contiguous()
    N = weight.shape[0]
    y = torch.empty(*x.shape[:-1], N, dtype=torch.float32)
    b = bias.data_ptr() if bias is not None else None
    threads = torch.get_num_threads()
    if weight.dtype == torch.float32:
        lib.linear_f32(x.data_ptr(), weight.data_ptr(), b, y.data_ptr(), rows, N, K, threads)
    else:
        lib.linear_bf16w(x.data_ptr(), weight.data_ptr(), b, y.data_ptr(), rows, N, K, threads)
    return y


def _inference(*tensors: torch.Tensor) -> bool:
    """fp32 CPU tensors that autograd does not need to see."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float):
    """RMSNorm of fp32 rows (at most MAX_ROWS) with an fp32 or bf16 gain, or None."""
    lib = library()
    dim = x.shape[-1]
    rows = x.numel() // dim if dim else 0
    if lib is None or not 0 < rows <= MAX_ROWS or not _inference(x):
        return None
    if weight.dtype not in (torch.float32, torch.bfloat16) or not weight.is_contiguous():
        return None
    if torch.is_grad_enabled() and weight.requires_grad:
        return None
    x = x.contiguous()
    y = torch.empty_like(x)
    bf16 = weight.dtype == torch.bfloat16
    lib.rms_norm(x.data_ptr(), weight.data_ptr(), bf16, y.data_ptr(), rows, dim, eps)
    return y


def attend_one(qkv: torch.Tensor, rope, cache, layer: int, n_head: int, n_kv_head: int):
    """One decoding step's attention for B rows of one new token each, or None.

    qkv (B, 1, (nh + 2 nkv) hd) is the QKV projection; `rope` is (cos, sin) of shape (1, hd) for
    this position or None; the new keys and values go into `cache` (a KVCache) at `cache.length`.
    Returns (B, 1, nh hd), the heads side by side, as `CausalSelfAttention` would."""
    lib = library()
    if lib is None or qkv.shape[1] != 1 or not _inference(qkv, cache.k):
        return None
    B, width = qkv.shape[0], qkv.shape[-1]
    hd = width // (n_head + 2 * n_kv_head)
    pos = cache.room(1) - 1
    if rope is not None:
        cos, sin = (t.contiguous() for t in rope)
        if not _inference(cos, sin):
            return None
    qkv = qkv.contiguous().clone()  # rotated in place
    out = torch.empty(B, 1, n_head * hd)
    k, v = cache.k[layer], cache.v[layer]  # (B, nkv, max_len, hd), contiguous
    status = lib.attend_one(
        qkv.data_ptr(),
        cos.data_ptr() if rope is not None else None,
        sin.data_ptr() if rope is not None else None,
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        B,
        n_head,
        n_kv_head,
        hd,
        cache.max_len,
        pos,
        torch.get_num_threads(),
    )
    if status:
        raise MemoryError("core.kernels: no memory for the attention scores")
    return out
