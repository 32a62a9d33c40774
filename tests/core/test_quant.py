"""Quantized matrices (core/kernels/quant.c) against gguf's reference dequantizers, per block
type, on both instruction-set builds and on the torch fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import kernels
from core.config import ModelConfig
from core.generate.decode import stream_tokens
from core.kernels import build, quant
from core.kernels.quantize import (
    packed_model,
    quantize_matrix,
    quantize_q4_k,
    quantize_q6_k,
    quantize_state,
    write_gguf,
)
from core.load import load_model
from core.model import Decoder
from core.weights import PACKED_TYPES, Packed

pytestmark = pytest.mark.usefixtures("exact_prefill")  # held to the weights unless asked
TYPES = sorted(PACKED_TYPES)
# byte offsets of each type's fp16 scale fields inside a block
SCALES = {"Q4_0": [0], "Q4_1": [0, 2], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208]}


def random_blocks(qtype: str, n: int, k: int, seed: int) -> Packed:
    """Random quants with small finite fp16 scales: every bit pattern the kernel must decode."""
    size, nbytes = PACKED_TYPES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (n, k // size, nbytes), dtype=np.uint8)
    for at in SCALES[qtype]:
        scale = rng.normal(0, 0.02, (n, k // size)).astype(np.float16)
        blocks[..., at : at + 2] = scale.view(np.uint8).reshape(n, k // size, 2)
    return Packed.of(qtype, blocks.reshape(n, -1), k)


def reference(packed: Packed) -> torch.Tensor:
    """gguf's own dequantizers (numpy), in float64."""
    return packed.dequantize().double()


def tolerance(variant: str | None, rows: int) -> float:
    """fp32 sums: 1e-5 (the VNNI build's three int8 digits of x hold fp32's 24 bits); the bf16
    build's decoding steps split x into two bf16 (~1e-5 each)."""
    return 1e-4 if variant == "avx512bf16" and rows <= quant.MAX_ROWS else 1e-5


def variants() -> list[str | None]:
    """The C builds this CPU runs, and None for the torch fallback."""
    flags = build.cpu_flags()
    have = [name for name, (_, needs) in build.ISAS.items() if needs <= flags]
    if os.environ.get("CI") and "avx2" not in have:
        pytest.fail("CI machines must run the AVX2 kernels")
    return [*have, None]


@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("rows", [1, 3, 16, 21])
def test_matvec_equals_dequantized_reference(variant, qtype, rows):
    """Odd row counts, K of 3 or 5 blocks, with bias; 21 rows take the prefill (GEMM) path."""
    size = PACKED_TYPES[qtype][0]
    n, k = (37, 3 * size) if size == 256 else (29, 5 * size)
    packed = random_blocks(qtype, n, k, seed=rows)
    x = torch.randn(rows, 1, k, generator=torch.Generator().manual_seed(rows))
    bias = torch.randn(n)
    with build.forced(variant), torch.inference_mode():
        got = quant.linear(x, packed, bias)
    want = F.linear(x.double(), reference(packed), bias.double())
    assert got.shape == (rows, 1, n) and got.dtype == torch.float32
    scale = want.abs().max().item()
    tol = tolerance(variant, rows)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("qtype", TYPES)
def test_bf16_prefill_is_within_bf16_rounding(variant, qtype, monkeypatch):
    """Prefill in bf16: weights and activations rounded to bf16 (8 significant bits), so each
    output within ~1% of the output scale; the decoding steps' few rows stay exact."""
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "bf16")
    size = PACKED_TYPES[qtype][0]
    n, k = (37, 3 * size) if size == 256 else (29, 5 * size)
    packed = random_blocks(qtype, n, k, seed=5)
    x = torch.randn(21, k, generator=torch.Generator().manual_seed(5))
    with build.forced(variant), torch.inference_mode():
        got = quant.linear(x, packed)
        step = quant.linear(x[:3], packed)
        beams = quant.linear(x[:6, None], packed)  # six decoding steps side by side: exact
        prompt = quant.linear(x[None, :6], packed)  # a six-token prompt: the GEMM's
    want = F.linear(x.double(), reference(packed))
    scale = want.abs().max().item()
    assert 1e-4 * scale < (got.double() - want).abs().max().item() <= 1e-2 * scale
    assert 1e-4 * scale < (prompt[0].double() - want[:6]).abs().max().item() <= 1e-2 * scale
    tol = tolerance(variant, 3)
    torch.testing.assert_close(step.double(), want[:3], rtol=tol, atol=tol * scale)
    tol = tolerance(variant, 6)
    torch.testing.assert_close(beams[:, 0].double(), want[:6], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("variant", variants())
def test_logits_stay_fp32_over_many_rows(variant, monkeypatch):
    """The LM head over a whole sequence (a replayed reply's scores) keeps fp32 sums under bf16
    prefill: bf16 logits would tie many tokens."""
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "bf16")
    packed = random_blocks("Q8_0", 64, 256, seed=9)
    x = torch.randn(1, 20, 256, generator=torch.Generator().manual_seed(9))
    with build.forced(variant), torch.inference_mode():
        got = quant.QuantEmbedding(packed).logits(x)
    want = F.linear(x.double(), reference(packed))
    scale, tol = want.abs().max().item(), tolerance(variant, 1)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * scale)


def test_prefill_precision_follows_the_cpu_and_the_setting(monkeypatch):
    monkeypatch.delenv("SCRATCHGPT_PREFILL")
    monkeypatch.setattr(quant, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert quant.prefill_dtype() == torch.bfloat16
    monkeypatch.setattr(quant, "cpu_flags", lambda: {"avx2", "avx512f"})  # bf16 emulated: slower
    assert quant.prefill_dtype() == torch.float32
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "BF16")
    assert quant.prefill_dtype() == torch.bfloat16
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "half")
    with pytest.raises(ValueError, match="SCRATCHGPT_PREFILL='half' is none of auto, bf16, fp32"):
        quant.prefill_dtype()


def test_the_model_status_says_how_prompts_are_multiplied(monkeypatch):
    config = tiny_config()
    model = packed_model(config, quantize_state(Decoder(config).state_dict(), "q4"), torch.float32)
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "bf16")
    assert kernels.describe(model).endswith(", prompts multiplied in bf16")
    monkeypatch.setenv("SCRATCHGPT_PREFILL", "fp32")
    assert "bf16" not in kernels.describe(model)


@pytest.mark.parametrize("variant", variants())
@pytest.mark.parametrize("qtype", TYPES)
def test_embedding_rows_equal_the_reference(variant, qtype):
    packed = Packed.cat([random_blocks(qtype, 5, 256, 0), random_blocks("Q8_0", 4, 256, 1)])
    table = reference(packed).float()
    idx = torch.tensor([[8, 0, 4], [5, 3, 8]])
    with build.forced(variant):
        got = quant.QuantEmbedding(packed)(idx)
    torch.testing.assert_close(got, table[idx], rtol=1e-6, atol=1e-7)  # fma: one rounding


def test_mixed_parts_multiply_as_one_matrix():
    """Q, K and V in different types (as in Q4_K_M files) stay separate parts of one product."""
    parts = [random_blocks("Q4_K", 9, 512, 2), random_blocks("Q6_K", 3, 512, 3)]
    packed = Packed.cat([*parts, random_blocks("Q6_K", 3, 512, 4)])
    assert [(t, d.shape[0]) for t, d in packed.parts] == [("Q4_K", 9), ("Q6_K", 3), ("Q6_K", 3)]
    dense = torch.cat([reference(packed.rows(0, 9)), reference(packed.rows(9, 15))])
    x, bias = torch.randn(2, 512), torch.randn(15)
    with torch.inference_mode():
        got = quant.linear(x, packed, bias)
    want = F.linear(x.double(), dense, bias.double())
    tol = tolerance(build.isa, 2)
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K"])
def test_quantizers_round_trip_within_their_step(qtype):
    """Quantize, dequantize with gguf's reference: the error stays within the type's step."""
    w = torch.randn(6, 512) * torch.linspace(0.01, 1.0, 6)[:, None]
    packed = quantize_matrix(w, qtype)
    assert packed.parts[0][1].shape == (6, 512 // PACKED_TYPES[qtype][0] * PACKED_TYPES[qtype][1])
    err = (reference(packed).float() - w).abs().amax(1) / w.abs().amax(1)
    # over the row's max |w|: half a step, a step being (max - min) / 15 for the asymmetric
    # 4-bit types and max / 127 or max / 31 for the symmetric ones; Q4_0 clips its far end by a
    # whole max / 8 (the reference maps -max to +7); Q4_K adds its 6-bit sub-block scales
    bound = {"Q8_0": 0.5 / 127, "Q4_0": 1 / 8, "Q4_1": 1 / 15, "Q4_K": 1 / 15 + 1 / 60}
    bound["Q6_K"] = 0.5 / 31 + 1 / 127
    assert err.max() <= bound[qtype] * 1.05, err


def test_q4_k_and_q6_k_encoders_match_the_layout_llama_cpp_reads():
    """Our encoders written through gguf's reference decoder equal the values we meant."""
    w = np.random.default_rng(0).normal(size=(3, 256)).astype(np.float32)
    for encode, qtype in ((quantize_q4_k, "Q4_K"), (quantize_q6_k, "Q6_K")):
        blocks = encode(w)
        back = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype]).reshape(3, 256)
        assert np.corrcoef(back.ravel(), w.ravel())[0, 1] > 0.99


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=256, block_size=64)
    values["ffn_hidden"] = 512
    return ModelConfig.from_dict(ModelConfig.preset("llama").to_dict() | values | overrides)


def dequantized_model(config: ModelConfig, state: dict) -> Decoder:
    dense = {k: v.dequantize() if isinstance(v, Packed) else v for k, v in state.items()}
    model = Decoder(config).eval()
    model.load_state_dict(dense)
    return model


@pytest.mark.parametrize("kind", ["int8", "q4", "Q4_K", "Q6_K"])
def test_packed_model_equals_its_dequantized_model(kind):
    """Faithful to the weights it holds: prefill and cached steps match the dense model made of
    the same dequantized weights (only the summation order differs)."""
    torch.manual_seed(0)
    config = tiny_config()
    state = quantize_state(Decoder(config).state_dict(), kind)
    packed = kernels.prepare(packed_model(config, state, torch.float32))
    dense = dequantized_model(config, state)
    ids = torch.randint(0, 96, (1, 20))
    with torch.inference_mode():
        caches = packed.new_cache(), dense.new_cache()
        for step in (ids[:, :17], ids[:, 17:18], ids[:, 18:19], ids[:, 19:]):
            got, want = packed(step, cache=caches[0]), dense(step, cache=caches[1])
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_the_fallbacks_decode_the_same_tokens():
    """The AVX-512 build, the AVX2 build and torch alone (gguf's dequantizer per call) give the
    same greedy tokens and logits within fp32 summation noise."""
    torch.manual_seed(1)
    config = tiny_config()
    model = kernels.prepare(
        packed_model(config, quantize_state(Decoder(config).state_dict(), "Q4_K"), torch.float32)
    )
    ids = torch.randint(0, 96, (1, 9))
    runs = {}
    for variant in variants():
        with build.forced(variant), torch.inference_mode():
            tokens = list(stream_tokens(model, ids[0].tolist(), max_new_tokens=12))
            runs[variant] = (tokens, model(ids))
    first_tokens, first_logits = next(iter(runs.values()))
    for variant, (tokens, logits) in runs.items():
        assert tokens == first_tokens, variant
        tol = tolerance(variant, 1)
        torch.testing.assert_close(logits, first_logits, rtol=tol, atol=tol)


def test_gguf_round_trip_keeps_types_and_shapes(tmp_path, smollm2_gguf):
    """A random Q4_K / Q6_K / Q8_0 qwen2-style model written as GGUF loads back packed (Q, K and
    V in different types included), and equals the same file loaded dense."""
    config = tiny_config(n_kv_head=2, attn_bias=True, name="qwen2", vocab_size=512)
    torch.manual_seed(2)
    state = quantize_state(Decoder(config).state_dict(), "Q4_K")
    state["blocks.0.attn.qkv.weight"] = Packed.cat(
        [
            state["blocks.0.attn.qkv.weight"].rows(0, 384),
            quantize_matrix(torch.randn(128, 256), "Q6_K"),
        ]
    )
    path = write_gguf(tmp_path / "tiny.gguf", config, state, smollm2_gguf)
    packed, _tok, _ = load_model(path, device="cpu", quantize="gguf")
    dense, _tok, _ = load_model(path, device="cpu", dtype="fp32")
    qkv = packed.blocks[0].attn.qkv
    assert [t for t, _ in qkv.packed.parts] == ["Q4_K", "Q4_K", "Q6_K"] and qkv.bias is not None
    assert [t for t, _ in packed.wte.packed.parts] == ["Q6_K"]
    packed = kernels.prepare(packed)
    ids = torch.randint(0, 512, (1, 12))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids), dense(ids), rtol=1e-4, atol=1e-4)


def test_gguf_reader_reads_what_gguf_reads(smollm2_gguf):
    """Our one-pass reader (20x faster on the tokenizer's metadata) against gguf's own."""
    from core.gguf_file import Reader

    ours, theirs = Reader(smollm2_gguf), gguf.GGUFReader(str(smollm2_gguf))
    for key, field in ours.fields.items():
        value = theirs.fields[key].contents()
        assert field.contents() == (pytest.approx(value) if isinstance(value, float) else value)
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, list(a.shape)) == (b.name, b.tensor_type, list(b.shape))
        assert a.data.dtype == b.data.dtype and np.array_equal(a.data, b.data)


def test_a_truncated_gguf_is_a_weights_error(tmp_path, smollm2_gguf):
    from core.weights import WeightsError, load_gguf

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[:5000])
    with pytest.raises(WeightsError, match="not a readable GGUF"):
        load_gguf(cut)


def test_the_pick_prefers_vnni_and_takes_the_override(monkeypatch):
    """The fastest faithful build the CPU runs (avx512bf16 only when asked), or the one named."""
    avx512 = build.ISAS["avx512"][1]
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("SCRATCHGPT_KERNELS", raising=False)
    monkeypatch.setattr(build, "cpu_flags", lambda: avx512 | {"avx512_vnni", "avx512_bf16"})
    assert build.pick_isa() == "avx512vnni"
    monkeypatch.setattr(build, "cpu_flags", lambda: avx512)
    assert build.pick_isa() == "avx512"
    monkeypatch.setenv("SCRATCHGPT_KERNELS", "avx2")
    assert build.pick_isa() == "avx2"
    monkeypatch.setenv("SCRATCHGPT_KERNELS", "avx512vnni")
    assert build.pick_isa() is None  # asked for a build this CPU cannot run: says why
    assert build.missing() == (
        "SCRATCHGPT_KERNELS=avx512vnni: this CPU lacks avx512_vnni (the avx512vnni build needs it)"
    )
    monkeypatch.setenv("SCRATCHGPT_KERNELS", "avx9")
    assert build.pick_isa() is None and "'avx9' is none of 0, auto, avx512bf16" in build.missing()


def test_the_default_model_loads_without_importing_dynamo():
    """Meta-device builds (shape checks, packed models) leave parameters uninitialised and make
    the rope tables on the CPU: torch's Python decompositions, whose first use imports
    torch._dynamo (~1.2 s of the app's first answer), never run."""
    code = (
        "import sys\n"
        "from core.generate.engine import LLM\n"
        "llm = LLM.load('default')\n"
        "print(llm.model.rope_cos.device, 'torch._dynamo' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split()[-2:] == ["cpu", "False"]
