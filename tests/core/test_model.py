"""The decoder on tiny random configs: layers against their formulas, causality, KV cache."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from core.config import ModelConfig
from core.layers import (
    LayerNorm,
    RMSNorm,
    attention_explicit,
    attention_sdpa,
    sinusoidal_table,
)
from core.model import ContextLengthError, Decoder

TINY = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=64)
ARCHS = {
    "classic": ModelConfig.preset("classic", **TINY),
    "gpt2": ModelConfig.preset("gpt2", **TINY),
    "llama-gqa": ModelConfig.preset("llama", **TINY, n_kv_head=2, ffn_hidden=48),
    "qwen2-like": ModelConfig.preset(
        "llama", **TINY, n_kv_head=1, ffn_hidden=48, attn_bias=True, tied_embeddings=False
    ),
    "learned-swiglu-untied": ModelConfig(
        **TINY, position="learned", activation="swiglu", tied_embeddings=False
    ),
}


def make(config: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so nothing passes by being zero or one
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def test_layernorm_matches_formula_and_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 4 + 2
    norm = LayerNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    expected = F.layer_norm(x, (16,), norm.weight, norm.bias, 1e-5)
    torch.testing.assert_close(norm(x), expected, atol=1e-5, rtol=1e-5)
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    torch.testing.assert_close(
        norm(x), norm.weight * (x - mean) / torch.sqrt(var + 1e-5) + norm.bias
    )


def test_rmsnorm_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 16) * 3
    norm = RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    torch.testing.assert_close(
        norm(x), F.rms_norm(x, (16,), norm.weight, 1e-6), atol=1e-6, rtol=1e-5
    )


def test_sinusoidal_table_matches_formula():
    table = sinusoidal_table(50, 16)
    for k in (0, 1, 7, 49):
        for i in range(8):
            angle = k / 10000 ** (2 * i / 16)
            assert table[k, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[k, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
@pytest.mark.parametrize(("t_q", "t_k"), [(7, 7), (1, 9), (3, 9)])
def test_explicit_attention_equals_fused(n_kv_head, t_q, t_k):
    torch.manual_seed(0)
    q = torch.randn(2, 4, t_q, 8)
    k, v = torch.randn(2, n_kv_head, t_k, 8), torch.randn(2, n_kv_head, t_k, 8)
    torch.testing.assert_close(
        attention_explicit(q, k, v), attention_sdpa(q, k, v), atol=1e-5, rtol=1e-5
    )


def test_explicit_attention_is_the_formula():
    """softmax(QK^T/sqrt(d) + mask) V by hand, one head, three tokens."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    scores = q[0, 0] @ k[0, 0].T / 2.0
    mask = torch.tensor([[0, -math.inf, -math.inf], [0, 0, -math.inf], [0, 0, 0]])
    expected = torch.softmax(scores + mask, dim=-1) @ v[0, 0]
    torch.testing.assert_close(attention_explicit(q, k, v)[0, 0], expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_model_explicit_equals_sdpa(arch):
    model = make(ARCHS[arch])
    ids = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        fused = model(ids)
        model.attn_impl = "explicit"
        explicit = model(ids)
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_causality(arch, impl):
    """Changing token t+1 never changes the logits at positions <= t."""
    model = make(ARCHS[arch])
    model.attn_impl = impl
    ids = torch.randint(0, 97, (1, 24))
    with torch.no_grad():
        base = model(ids)
        for t in (0, 5, 22):
            changed = ids.clone()
            changed[0, t + 1 :] = (changed[0, t + 1 :] + 13) % 97
            out = model(changed)
            assert torch.equal(out[0, : t + 1], base[0, : t + 1])
            assert not torch.allclose(out[0, t + 1], base[0, t + 1])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("impl", ["sdpa", "explicit"])
def test_kv_cache_equals_full_sequence(arch, impl):
    """Prefill + chunks + single tokens through the cache give the full-sequence logits."""
    model = make(ARCHS[arch])
    model.attn_impl = impl
    ids = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(batch_size=2)
        pieces, start = [], 0
        for size in (11, 5, 1, 1, 7, 1, 4):
            pieces.append(model(ids[:, start : start + size], cache=cache))
            start += size
    assert cache.length == 30
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_last_only_returns_final_position():
    model = make(ARCHS["classic"])
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids, last_only=True), model(ids)[:, -1:])


def test_dropout_acts_while_training_only():
    model = make(ARCHS["classic"])
    ids = torch.randint(0, 97, (2, 9))
    with torch.no_grad():
        plain = model(ids)
        model.dropout = 0.3
        torch.testing.assert_close(model(ids), plain)  # eval mode: the exact same function
        model.train()
        a, b = model(ids), model(ids)
    assert (a - b).abs().max() > 1e-3 and (a - plain).abs().max() > 1e-3  # fresh masks each call
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        model.dropout = 1.0


def test_context_overflow_is_a_clear_error():
    model = make(ARCHS["llama-gqa"])
    with pytest.raises(ContextLengthError, match="65 tokens exceed the model's context of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_grouped_query_attention_has_fewer_kv_parameters():
    mha = Decoder(ModelConfig.preset("llama", **TINY, n_kv_head=4, ffn_hidden=48))
    gqa = Decoder(ModelConfig.preset("llama", **TINY, n_kv_head=1, ffn_hidden=48))
    assert mha.blocks[0].attn.qkv.weight.shape == (3 * 32, 32)
    assert gqa.blocks[0].attn.qkv.weight.shape == ((4 + 2) * 8, 32)


def test_classic_learns_a_pattern():
    """The classic preset trains: a few Adam steps fit a repeating sequence."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig.preset("classic", **TINY))
    ids = torch.arange(32).repeat(1, 2) % 97  # (1, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 97), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1
