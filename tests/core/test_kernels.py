"""Our decoding kernels (core/kernels/cpu.c) against torch, and where it steps aside."""

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
from core.generate.decode import stream_tokens
from core.kernels import build, ops
from core.layers import KVCache, RMSNorm, apply_rope, attention_explicit, rope_tables
from core.model import Decoder

ROOT = Path(__file__).resolve().parents[2]


def _kernel_required() -> None:
    """Under CI the kernel must be there (x86-64 with AVX2 and gcc); elsewhere skip with why."""
    if not kernels.available():
        if os.environ.get("CI"):
            pytest.fail(f"core.kernels is off in CI: {kernels.status()}")
        pytest.skip(f"core.kernels is off here: {kernels.status()}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 2, 4, 16])
@pytest.mark.parametrize(("n", "k"), [(96, 64), (7, 13), (130, 200), (5, 1)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_kernel_equals_torch_linear(dtype, rows, n, k, with_bias):
    _kernel_required()
    g = torch.Generator().manual_seed(rows * 1000 + n + k)
    x = torch.randn(1, rows, k, generator=g)  # activations are fp32, weights fp32 or bf16
    w = torch.randn(n, k, generator=g).to(dtype)
    b = torch.randn(n, generator=g).to(dtype) if with_bias else None
    with torch.inference_mode():
        ours = ops.linear(x, w, b)
    assert ours is not None and ours.shape == (1, rows, n) and ours.dtype == torch.float32
    # the exact product of the stored (bf16-rounded) weights: the kernel widens, never rounds
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch.testing.assert_close(ours.double(), exact, rtol=1e-5, atol=1e-4)


def test_kernel_steps_aside_where_torch_must_run():
    _kernel_required()
    w = torch.randn(8, 4)
    assert ops.linear(torch.randn(17, 4), w) is None  # prefill / training: torch's GEMM
    assert ops.linear(torch.randn(2, 4, dtype=torch.float64), w.double()) is None
    assert ops.linear(torch.randn(2, 4), w.t().contiguous().t()) is None  # transposed store
    assert ops.linear(torch.randn(2, 4, dtype=torch.bfloat16), w) is None  # bf16 activations
    assert ops.linear(torch.randn(2, 4), w.half()) is None
    leaf = torch.randn(8, 4, requires_grad=True)
    assert ops.linear(torch.randn(2, 4), leaf) is None  # autograd needs torch's op
    with torch.no_grad():
        assert ops.linear(torch.randn(2, 4), leaf) is not None


def test_model_decodes_the_same_with_and_without_the_kernel():
    """Greedy tokens of a tiny Llama-style model, kernel on vs off (torch only) in fp32."""
    _kernel_required()
    config = ModelConfig.preset(
        "llama", vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64
    )
    torch.manual_seed(0)
    model = kernels.prepare(Decoder(config).eval())
    prompt = [5, 17, 3, 42, 8]
    on = list(stream_tokens(model, prompt, max_new_tokens=20))
    lib, build._lib = build._lib, None  # the torch path, as on a machine without the kernel
    try:
        off = list(stream_tokens(model, prompt, max_new_tokens=20))
    finally:
        build._lib = lib
    assert on == off and len(on) == 20


def test_build_is_cached_by_source_hash(tmp_path):
    if not kernels.available():
        pytest.skip(f"core.kernels is off here: {kernels.status()}")
    first = build.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build.build(tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_disabled_kernel_falls_back_and_says_why():
    code = (
        "from core import kernels; from core.kernels import ops; import torch; "
        "print(kernels.available(), kernels.status()); "
        "print(ops.linear(torch.randn(1, 4), torch.randn(3, 4)))"
    )
    env = {**os.environ, "SCRATCHGPT_KERNELS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["False disabled by SCRATCHGPT_KERNELS", "None"]


def test_bf16_model_on_cpu_computes_in_fp32():
    """bf16 weights, fp32 activations: logits equal the fp32 model holding the same bf16-rounded
    weights, for the prefill (torch) and the cached steps (the kernel, where available)."""
    config = ModelConfig.preset(
        "llama", vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64
    )
    torch.manual_seed(1)
    bf16 = kernels.prepare(Decoder(config).eval().to(torch.bfloat16))
    widened = Decoder(config).eval()
    widened.load_state_dict({k: v.float() for k, v in bf16.state_dict().items()})
    ids = torch.tensor([[5, 17, 3, 42, 8, 61]])
    with torch.inference_mode():
        caches = bf16.new_cache(), widened.new_cache()
        assert caches[0].k.dtype == torch.float32
        for step in (ids, ids[:, :1], ids[:, 2:3]):
            ours, want = bf16(step, cache=caches[0]), widened(step, cache=caches[1])
            assert ours.dtype == torch.float32
            torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_kernel_equals_the_formula(dtype):
    _kernel_required()
    norm = RMSNorm(40, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(40))
    norm = norm.to(dtype)
    x = torch.randn(3, 1, 40) * 7
    h = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(ops.rms_norm(x, norm.weight, 1e-5), norm.weight.float() * h)
    assert ops.rms_norm(torch.randn(17, 40), norm.weight, 1e-5) is None  # prefill: torch


@pytest.mark.parametrize(
    ("n_head", "n_kv_head", "rotary", "batch"), [(4, 4, True, 1), (6, 2, True, 3), (4, 1, False, 2)]
)
def test_attend_one_equals_cached_attention_in_torch(n_head, n_kv_head, rotary, batch):
    """Rotation, cache write and attention of one new token over 9 cached ones, against
    apply_rope + KVCache.update + attention_explicit."""
    _kernel_required()
    hd, pos = 8, 9
    config = ModelConfig.preset(
        "llama",
        vocab_size=11,
        n_layer=2,
        n_head=n_head,
        n_kv_head=n_kv_head,
        n_embd=n_head * hd,
        block_size=16,
    )
    ours, theirs = (KVCache(config, batch, 16) for _ in range(2))
    history = torch.randn(2, config.n_layer, batch, n_kv_head, pos, hd)
    for cache in (ours, theirs):
        cache.k[:, :, :, :pos], cache.v[:, :, :, :pos] = history[0], history[1]
        cache.length = pos
    qkv = torch.randn(batch, 1, (n_head + 2 * n_kv_head) * hd)
    cos, sin = rope_tables(16, hd, 10000.0)
    rope = (cos[pos : pos + 1], sin[pos : pos + 1]) if rotary else None
    with torch.inference_mode():
        got = ops.attend_one(qkv, rope, ours, 1, n_head, n_kv_head)
        heads = qkv.view(batch, 1, -1, hd).transpose(1, 2)
        q, k, v = heads.split((n_head, n_kv_head, n_kv_head), dim=1)
        if rotary:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        k_all, v_all = theirs.update(1, k, v)
        want = attention_explicit(q, k_all, v_all).transpose(1, 2).reshape(batch, 1, -1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.k, theirs.k, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.v, theirs.v)
    ours.length = 16
    with pytest.raises(ValueError, match="holds 16 positions"):
        ops.attend_one(qkv, rope, ours, 0, n_head, n_kv_head)


@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_few_row_linear_equals_torch(rows):
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, 1, 24), torch.randn(40, 24), torch.randn(40)
    torch.testing.assert_close(kernels.linear(x, w, b), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


def test_layouts_hold_the_same_model():
    config = ModelConfig.preset(
        "llama", vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, block_size=64
    )
    torch.manual_seed(0)
    model = kernels.prepare(Decoder(config).eval())
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        assert kernels.layout(model) == ("row" if kernels.available() else "transposed")
        kernels.set_layout(model, "row")
        row = model(ids)
        kernels.set_layout(model, "transposed")
        assert kernels.layout(model) == "transposed"
        assert model.blocks[0].mlp.fc.weight.shape == (3072, 32)  # (out, in) views unchanged
        torch.testing.assert_close(model(ids), row, atol=1e-5, rtol=1e-5)
        with kernels.batched(model):
            assert kernels.layout(model) == "row"
        assert kernels.layout(model) == "transposed"
        kernels.set_layout(model, "row")
        assert torch.equal(model(ids), row)
