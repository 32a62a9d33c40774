"""Our own CPU kernels for decoding steps (`cpu.c`), compiled on first use.

`linear`, `rms_norm` and `attend_one` return their result from the kernel, or None where the
kernel does not apply, so the caller runs the torch version (core/layers.py, the reference).
`linear(x, weight, bias)` returns `x W^T + b` from the kernel, or None when the kernel does not
apply, so the caller falls back to torch: not on CPU, more than `MAX_ROWS` rows (prefill and
training run torch's GEMM), autograd needed, activations other than fp32, weights other than
fp32/bf16, a non-contiguous W, or no kernel on this machine (no AVX2+FMA, no gcc, or
SCRATCHGPT_KERNELS=0). bf16 models on CPU keep fp32 activations (`core.model.Decoder.forward`).

The shared library is built with gcc into ~/.cache/scratchgpt/kernels (SCRATCHGPT_CACHE moves it),
named by a hash of the source and flags, and written atomically, so concurrent first uses and
source changes are safe. Why it is faster than torch here: bench/decode.py, and the profile in
bench/kernels.py.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

MAX_ROWS = 16
SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
reason = "not loaded yet"  # why the kernel is off, for logs and `python -m core info`


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_dir() -> Path:
    root = os.environ.get("SCRATCHGPT_CACHE") or Path.home() / ".cache" / "scratchgpt"
    return Path(root) / "kernels"


def build(target_dir: Path | None = None) -> Path:
    """Compile cpu.c (if not already built for this source and these flags); the .so path."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join(FLAGS).encode()).hexdigest()[:16]
    target_dir = target_dir or cache_dir()
    target = target_dir / f"cpu-{digest}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc) on PATH")
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        partial = Path(tmp) / target.name
        done = subprocess.run(
            [compiler, *FLAGS, str(SOURCE), "-o", str(partial), "-lm"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"gcc failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)  # atomic: a concurrent build leaves one complete file
    return target


def _load() -> ctypes.CDLL | None:
    global _lib, _tried, reason
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("SCRATCHGPT_KERNELS", "1").lower() in ("0", "off", "false", "no"):
            reason = "disabled by SCRATCHGPT_KERNELS"
            return None
        if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= _cpu_flags():
            reason = "this CPU lacks AVX2+FMA"
            return None
        try:
            lib = ctypes.CDLL(str(build()))
        except (OSError, RuntimeError) as err:
            reason = f"could not build the kernel: {err}"
            log.warning("core.kernels: %s; decoding uses torch's matmul.", reason)
            return None
        p, i = ctypes.c_void_p, ctypes.c_int
        lib.linear_f32.argtypes = [p, p, p, p, i, i, i, i]
        lib.linear_f32.restype = None
        lib.linear_bf16w.argtypes = [p, p, p, p, i, i, i, i]
        lib.linear_bf16w.restype = None
        f = ctypes.c_float
        lib.rms_norm.argtypes = [p, p, i, p, i, i, f]
        lib.rms_norm.restype = None
        lib.attend_one.argtypes = [p, p, p, p, p, p, i, i, i, i, i, i, i]
        lib.attend_one.restype = ctypes.c_int
        _lib, reason = lib, "on"
        return lib


def available() -> bool:
    return _load() is not None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """fp32 x (..., K) @ weight (N, K)^T + bias, with fp32 or bf16 weight (and bias), as fp32
    from the kernel; None where it does not apply."""
    lib = _lib if _tried else _load()
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
    lib = _lib if _tried else _load()
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
    lib = _lib if _tried else _load()
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
        qkv.data_ptr(), cos.data_ptr() if rope is not None else None,
        sin.data_ptr() if rope is not None else None, k.data_ptr(), v.data_ptr(),
        out.data_ptr(), B, n_head, n_kv_head, hd, cache.max_len, pos, torch.get_num_threads(),
    )  # fmt: skip
    if status:
        raise MemoryError("core.kernels: no memory for the attention scores")
    return out
