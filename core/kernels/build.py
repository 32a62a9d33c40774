"""Build and load our decoding kernels (cpu.c, quant.c, step.c) once per machine; say why not.

Each instruction set gets its own library: "avx2" (AVX2 + FMA + F16C, the floor), "avx512"
(AVX-512 F/BW/VL/DQ on top), "avx512vnni" (quant.c's integer dot products on top), the best one
picked at run time from the CPU's flags, so a CPU never loads code it cannot run; "avx512bf16"
(AVX512-BF16 dot products in quant.c) only when asked for. SCRATCHGPT_KERNELS=0 turns them off
(torch only); SCRATCHGPT_KERNELS=avx2 (or avx512, avx512vnni, avx512bf16) picks one; tests
compare them in one process (`forced`).

A library is built with gcc into ~/.cache/scratchgpt/kernels (SCRATCHGPT_CACHE moves it), named
by a hash of the sources and flags, and written atomically, so concurrent first uses and source
changes are safe. How much faster than torch: `bench/decode.py`, `bench/quantized.py`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
SOURCES = (HERE / "cpu.c", HERE / "quant.c", HERE / "step.c", HERE / "pool.c")
HEADERS = (HERE / "kernels.h",)
FLAGS = ("-O3", "-pthread", "-shared", "-fPIC")
# instruction set -> (compiler flags, CPU flags it needs), best first
_AVX2 = (("-mavx2", "-mfma", "-mf16c"), {"avx2", "fma", "f16c"})
_AVX512 = (
    (*_AVX2[0], "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"),
    _AVX2[1] | {"avx512f", "avx512bw", "avx512vl", "avx512dq"},
)
ISAS = {
    "avx512bf16": ((*_AVX512[0], "-mavx512bf16"), _AVX512[1] | {"avx512_bf16"}),
    "avx512vnni": ((*_AVX512[0], "-mavx512vnni"), _AVX512[1] | {"avx512_vnni"}),
    "avx512": _AVX512,
    "avx2": _AVX2,
}

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
reason = "not loaded yet"  # why the kernel is off, for logs and `python -m core info`
isa = ""  # the instruction set of the loaded library


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent); read once, as
    prefill asks per matrix (reading /proc/cpuinfo takes ~0.15 ms)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cache_dir() -> Path:
    root = os.environ.get("SCRATCHGPT_CACHE") or Path.home() / ".cache" / "scratchgpt"
    return Path(root) / "kernels"


def build(target_dir: Path | None = None, variant: str = "avx2") -> Path:
    """Compile the sources for `variant` (unless already built from these sources and flags);
    the .so path."""
    flags = (*FLAGS, *ISAS[variant][0])
    text = b"".join(p.read_bytes() for p in (*SOURCES, *HEADERS))
    digest = hashlib.sha256(text + " ".join(flags).encode()).hexdigest()[:16]
    target_dir = target_dir or cache_dir()
    target = target_dir / f"cpu-{variant}-{digest}.so"
    if target.exists():
        return target
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise RuntimeError("no C compiler (gcc) on PATH")
    target_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target_dir) as tmp:
        partial = Path(tmp) / target.name
        done = subprocess.run(
            [compiler, *flags, *map(str, SOURCES), "-o", str(partial), "-lm"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"gcc failed: {done.stderr.strip()[-500:]}")
        os.replace(partial, target)  # atomic: a concurrent build leaves one complete file
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they are off (`reason` says why)."""
    if _tried:
        return _lib
    return _load()


def pick_isa() -> str | None:
    """The best instruction set this CPU runs (or SCRATCHGPT_KERNELS names); None where none."""
    wanted = os.environ.get("SCRATCHGPT_KERNELS", "auto").lower()
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    flags = cpu_flags()
    for name, (_, needs) in ISAS.items():
        # avx512bf16 only when asked: no faster than avx512 on the Zen 4 we measured, and its
        # split activations are exact to ~1e-5 rather than fp32's ~1e-7 (bench/README.md)
        auto = wanted in ("auto", "1", "on") and name != "avx512bf16"
        if (auto or wanted == name) and needs <= flags:
            return name
    return None


def missing() -> str:
    """Why `pick_isa` found no build: the CPU flags the asked-for (or the least) build lacks."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"the kernels are x86-64 only; this CPU is {platform.machine()}"
    wanted = os.environ.get("SCRATCHGPT_KERNELS", "auto").lower()
    if wanted not in (*ISAS, "auto", "1", "on"):
        return f"SCRATCHGPT_KERNELS={wanted!r} is none of 0, auto, {', '.join(ISAS)}"
    name = wanted if wanted in ISAS else "avx2"
    lacks = sorted(ISAS[name][1] - cpu_flags())
    asked = f"SCRATCHGPT_KERNELS={wanted}: " if wanted in ISAS else ""
    return f"{asked}this CPU lacks {', '.join(lacks)} (the {name} build needs it)"


def _load() -> ctypes.CDLL | None:
    global _lib, _tried, reason, isa
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("SCRATCHGPT_KERNELS", "1").lower() in ("0", "off", "false", "no"):
            reason = "disabled by SCRATCHGPT_KERNELS"
            return None
        variant = pick_isa()
        if variant is None:
            reason = missing()
            return None
        try:
            lib = ctypes.CDLL(str(build(variant=variant)))
        except (OSError, RuntimeError) as err:
            reason = f"could not build the kernel: {err}"
            log.warning("core.kernels: %s; decoding uses torch's matmul.", reason)
            return None
        bind(lib)
        _lib, reason, isa = lib, "on", variant
        return lib


def bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the kernels' C signatures on a loaded library (any variant)."""
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
    lib.linear_q.argtypes = [i, p, p, p, p, i, i, i, i, i]
    lib.linear_q.restype = ctypes.c_int
    lib.dequant_rows.argtypes = [i, p, p, p, i, i, i]
    lib.dequant_rows.restype = ctypes.c_int
    lib.dequant_rows_bf16.argtypes = [i, p, p, p, i, i, i]
    lib.dequant_rows_bf16.restype = ctypes.c_int
    lib.decode_layers.argtypes = [p, p, p, i, p, p, p, p, i, i, i]
    lib.decode_layers.restype = ctypes.c_int
    return lib


def available() -> bool:
    return library() is not None


@contextmanager
def forced(variant: str | None) -> Iterator[None]:
    """Meanwhile use the `variant` library (None: torch only) instead of the one picked; how tests
    and benchmarks compare the paths in one process. Not thread-safe: for tests and benches."""
    global _lib, isa
    library()
    saved = _lib, isa
    _lib = None if variant is None else bind(ctypes.CDLL(str(build(variant=variant))))
    isa = variant or ""
    try:
        yield
    finally:
        _lib, isa = saved
