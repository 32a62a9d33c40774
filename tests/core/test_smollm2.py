"""The packaged SmolLM2-135M-Instruct GGUF: our decoder against `transformers` on the same file."""

from __future__ import annotations

import pytest
import torch

from core.generate.decode import stream_tokens

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("exact_prefill")  # transformers' fp32 logits

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "Café, naïve, 東京 and 🚀🌍: Unicode everywhere.",
    "<|im_start|>user\nWhat is 17 * 23?<|im_end|>\n<|im_start|>assistant\n",
    "In 1969, Neil Armstrong   became the first person to walk on the Moon.\n\nHe said",
]


@pytest.fixture(scope="module")
def ours(smollm2):
    return smollm2


@pytest.fixture(scope="module")
def reference(smollm2_reference):
    return smollm2_reference


def test_config_read_from_gguf(ours):
    c = ours.config
    assert (c.n_layer, c.n_head, c.n_kv_head, c.n_embd, c.ffn_hidden, c.vocab_size) == (
        30,
        9,
        3,
        576,
        1536,
        49152,
    )
    assert (c.position, c.norm, c.activation, c.rope_theta, c.tied_embeddings) == (
        "rope",
        "rmsnorm",
        "swiglu",
        100000.0,
        True,
    )


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(ours, reference, prompt):
    ids = torch.tensor([ours.tokenizer.encode(prompt)])
    with torch.no_grad():
        expected = reference(ids).logits
        got = ours.model(ids)
    assert (got - expected).abs().max().item() <= 1e-3


def test_explicit_attention_on_real_weights(ours, reference):
    ids = torch.tensor([ours.tokenizer.encode(PROMPTS[1])])
    try:
        ours.model.attn_impl = "explicit"
        with torch.no_grad():
            diff = (ours.model(ids) - reference(ids).logits).abs().max().item()
    finally:
        ours.model.attn_impl = "sdpa"
    assert diff <= 1e-3


def test_kv_cache_on_real_weights(ours):
    ids = torch.tensor([ours.tokenizer.encode(PROMPTS[4])])
    with torch.no_grad():
        full = ours.model(ids)
        cache = ours.model.new_cache()
        first = ours.model(ids[:, :10], cache=cache)
        rest = [ours.model(ids[:, t : t + 1], cache=cache) for t in range(10, ids.shape[1])]
    torch.testing.assert_close(torch.cat([first, *rest], dim=1), full, atol=1e-4, rtol=1e-4)


def test_greedy_continuation_matches_transformers(ours, reference):
    messages = [{"role": "user", "content": "Name three primary colours."}]
    ids = ours.tokenizer.encode(ours.render(messages))
    stop = ours.tokenizer.stop_token_ids
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)
    expected = []
    for token in out[0, len(ids) :].tolist():
        if token in stop:
            break
        expected.append(token)
    got = list(stream_tokens(ours.model, ids, max_new_tokens=24, stop_ids=stop))
    assert got == expected and len(got) > 3
