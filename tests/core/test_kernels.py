"""Our decoding matmul kernel (core/kernels/gemv.c) against torch, and where it steps aside."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core import kernels
from core.config import ModelConfig
from core.decode import stream_tokens
from core.model import Decoder

ROOT = Path(__file__).resolve().parents[2]


def _kernel_required() -> None:
    """Under CI the kernel must be there (x86-64 with AVX2 and gcc); elsewhere skip with why."""
    if not kernels.available():
        if os.environ.get("CI"):
            pytest.fail(f"core.kernels is off in CI: {kernels.reason}")
        pytest.skip(f"core.kernels is off here: {kernels.reason}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 4, 16])
@pytest.mark.parametrize(("n", "k"), [(96, 64), (7, 13), (130, 200), (5, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_equals_torch_linear(dtype, rows, n, k, with_bias):
    _kernel_required()
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(1, rows, k, generator=g).to(dtype)
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if with_bias else None
    with torch.inference_mode():
        ours = kernels.linear(x, w, b)
    assert ours is not None and ours.shape == (1, rows, n) and ours.dtype == dtype
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    if dtype == torch.float32:
        torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-4)
    else:  # fp32 sums rounded once to bf16: within half a bf16 unit (2^-8 relative) of exact
        assert ((ours.double() - exact).abs() <= exact.abs() * 2**-8 + 1e-6).all()


def test_kernel_bf16_rounds_to_nearest_even_and_keeps_nan():
    _kernel_required()
    bf16 = torch.bfloat16
    w = torch.tensor([[1.0, 1.0], [float("nan"), 0.0]], dtype=bf16)
    # exact fp32 sums halfway between two bf16 values (ulp 2^-7 at 1.0): the even mantissa wins
    x = torch.tensor([[1.0, 2**-8], [1.0, 3 * 2**-8]], dtype=bf16)
    y = kernels.linear(x, w)
    assert y[0, 0].item() == 1.0 and y[1, 0].item() == 1.0 + 2**-6
    assert torch.isnan(y[:, 1]).all()


def test_kernel_steps_aside_where_torch_must_run():
    _kernel_required()
    w = torch.randn(8, 4)
    assert kernels.linear(torch.randn(17, 4), w) is None  # prefill / training: torch's GEMM
    assert kernels.linear(torch.randn(2, 4, dtype=torch.float64), w.double()) is None
    assert kernels.linear(torch.randn(2, 4), w.t().contiguous().t()) is None  # transposed store
    assert kernels.linear(torch.randn(2, 4), w.to(torch.bfloat16)) is None  # mixed dtypes
    leaf = torch.randn(8, 4, requires_grad=True)
    assert kernels.linear(torch.randn(2, 4), leaf) is None  # autograd needs torch's op
    with torch.no_grad():
        assert kernels.linear(torch.randn(2, 4), leaf) is not None


def test_model_decodes_the_same_with_and_without_the_kernel():
    """Greedy tokens of a tiny Llama-style model, kernel on vs off (torch only) in fp32."""
    _kernel_required()
    config = ModelConfig.preset(
        "llama", vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64
    )
    torch.manual_seed(0)
    model = Decoder(config).eval()
    prompt = [5, 17, 3, 42, 8]
    on = list(stream_tokens(model, prompt, max_new_tokens=20))
    lib, kernels._lib = kernels._lib, None  # the torch path, as on a machine without the kernel
    try:
        off = list(stream_tokens(model, prompt, max_new_tokens=20))
    finally:
        kernels._lib = lib
    assert on == off and len(on) == 20


def test_build_is_cached_by_source_hash(tmp_path):
    if not kernels.available():
        pytest.skip(f"core.kernels is off here: {kernels.reason}")
    first = kernels.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert kernels.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_disabled_kernel_falls_back_and_says_why():
    code = (
        "from core import kernels; import torch; "
        "print(kernels.available(), kernels.reason); "
        "print(kernels.linear(torch.randn(1, 4), torch.randn(3, 4)))"
    )
    env = {**os.environ, "SCRATCHGPT_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["False disabled by SCRATCHGPT_KERNELS", "None"]
