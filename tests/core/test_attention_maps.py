"""Attention maps: real softmax rows of the model's own attention, causal, windowed within a
memory bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.attention_maps import (
    AttentionWindowError,
    attention_maps,
    attention_to_context,
    layer_weights,
)
from core.config import ModelConfig
from core.model import Decoder

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(vocab_size=97, n_layer=2, n_head=4, n_embd=32, block_size=160)
ARCHS = {
    "llama-gqa": ModelConfig.preset("llama", **TINY, n_kv_head=2, ffn_hidden=48),
    "gpt2": ModelConfig.preset("gpt2", **TINY),
    "classic": ModelConfig.preset("classic", **TINY),
}


@pytest.fixture(scope="module", params=list(ARCHS))
def model(request) -> Decoder:
    torch.manual_seed(0)
    m = Decoder(ARCHS[request.param]).eval()
    with torch.no_grad():  # sharper attention than the 0.02-std init
        for p in m.parameters():
            p.mul_(5.0 if p.dim() == 2 else 1.0)
    return m


IDS = torch.randint(0, 97, (120,), generator=torch.Generator().manual_seed(1)).tolist()


def test_rows_sum_to_one_and_nothing_attends_to_the_future(model):
    maps = attention_maps(model, IDS[:40])
    assert maps.weights.shape == (2, 4, 40, 40) and maps.queries == range(40)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, 40))
    assert torch.all(maps.earlier == 0)
    assert torch.all(maps.weights.triu(diagonal=1) == 0)
    assert torch.all(maps.weights.diagonal(dim1=-2, dim2=-1) > 0)
    torch.testing.assert_close(maps.head_average(), maps.weights.mean(1))
    torch.testing.assert_close(maps.layer_average(), maps.weights.mean(0))


def test_weights_are_the_ones_the_model_attends_with(model):
    """weights @ V reproduces each layer's attention output (the input of its W_O)."""
    qkv_seen, out_seen = {}, {}
    hooks = []
    for i, block in enumerate(model.blocks):
        hooks.append(
            block.attn.qkv.register_forward_hook(lambda m, a, y, i=i: qkv_seen.update({i: y}))
        )
        hooks.append(
            block.attn.proj.register_forward_hook(lambda m, a, y, i=i: out_seen.update({i: a[0]}))
        )
    with torch.no_grad():
        model(torch.tensor([IDS[:30]]))
    for h in hooks:
        h.remove()
    c = model.config
    for i in range(c.n_layer):
        w = layer_weights(model, qkv_seen[i], torch.arange(30))  # (1, nh, 30, 30)
        v = qkv_seen[i].view(1, 30, c.n_head + 2 * c.n_kv_head, c.head_dim).transpose(1, 2)
        v = v[:, c.n_head + c.n_kv_head :].repeat_interleave(c.n_head // c.n_kv_head, dim=1)
        y = (w @ v).transpose(1, 2).reshape(1, 30, -1)
        torch.testing.assert_close(y, out_seen[i], atol=1e-5, rtol=1e-4)


def test_a_window_is_the_same_slice_of_the_full_map(model):
    full = attention_maps(model, IDS, window=120)
    part = attention_maps(model, IDS, end=70, window=16)
    assert part.queries == part.keys == range(54, 70)
    torch.testing.assert_close(part.weights, full.weights[:, :, 54:70, 54:70])
    torch.testing.assert_close(part.earlier, full.weights[:, :, 54:70, :54].sum(-1))
    torch.testing.assert_close(part.weights.sum(-1) + part.earlier, torch.ones(2, 4, 16))


def test_attention_to_context_averages_layers_and_heads(model):
    full = attention_maps(model, IDS[:50], window=50)
    rows = attention_to_context(model, IDS[:50], [10, 49])
    torch.testing.assert_close(rows, full.weights.mean((0, 1))[[10, 49]])
    torch.testing.assert_close(rows.sum(-1), torch.ones(2))


def test_bad_windows_say_what_is_allowed(model):
    with pytest.raises(AttentionWindowError, match="window must be from 1 to 512"):
        attention_maps(model, IDS, window=0)
    with pytest.raises(AttentionWindowError, match="must end within the 120 tokens"):
        attention_maps(model, IDS, end=121)
    with pytest.raises(AttentionWindowError, match="no tokens"):
        attention_maps(model, [])
    with pytest.raises(AttentionWindowError, match="positions must be within"):
        attention_to_context(model, IDS[:5], [5])


MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from core.attention_maps import attention_maps, attention_to_context
    from core.generate.engine import LLM

    def peak_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

    llm = LLM.load("default")
    ids = torch.randint(100, 40000, (2048,), generator=torch.Generator().manual_seed(0)).tolist()
    llm.model(torch.tensor([ids[:2048]]), last_only=True)  # the plain forward's own peak first
    before = peak_kib()
    maps = attention_maps(llm.model, ids)
    rows = attention_to_context(llm.model, ids, list(range(1900, 2048)))
    sums = (maps.weights.sum(-1) + maps.earlier - 1).abs().max().item()
    print(json.dumps({"grown_kib": peak_kib() - before, "nbytes": maps.nbytes, "sums": sums,
                      "shape": list(maps.weights.shape), "rows": list(rows.shape)}))
    """
)


@pytest.mark.slow
def test_maps_of_a_2k_token_context_stay_within_the_memory_bound(smollm2_gguf):
    """SmolLM2, 2048 tokens: the full maps would be 30 x 9 x 2048^2 floats (4.5 GB); the default
    window keeps 17.7 MB and the whole call grows the process peak by under 256 MB."""
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["shape"] == [30, 9, 128, 128] and got["rows"] == [148, 2048]
    assert got["nbytes"] <= 30 * 9 * 128 * 129 * 4  # 17.8 MB
    assert got["sums"] < 1e-4
    assert got["grown_kib"] < 256 * 1024, got
