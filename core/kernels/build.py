"""Build and load `cpu.c` (our decoding kernels) once per machine; say why when they are off.

The shared library is built with gcc into ~/.cache/scratchgpt/kernels (SCRATCHGPT_CACHE moves it),
named by a hash of the source and flags, and written atomically, so concurrent first uses and
source changes are safe. How much faster than torch: `bench/decode.py`.
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

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu.c")
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
reason = "not loaded yet"  # why the kernel is off, for logs and `python -m core info`


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo is absent)."""
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


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None where they are off (`reason` says why)."""
    if _tried:
        return _lib
    return _load()


def _load() -> ctypes.CDLL | None:
    global _lib, _tried, reason
    with _lock:
        if _tried:
            return _lib
        _tried = True
        if os.environ.get("SCRATCHGPT_KERNELS", "1").lower() in ("0", "off", "false", "no"):
            reason = "disabled by SCRATCHGPT_KERNELS"
            return None
        if platform.machine() not in ("x86_64", "AMD64") or not {"avx2", "fma"} <= cpu_flags():
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
    return library() is not None
