"""Logit parity with `transformers` on tiny random GPT-2, Llama (GQA) and Qwen2 checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from core.checkpoint import build_model
from core.generate.engine import LLM
from core.load import ModelLoadError
from core.weights import load_hf_dir

transformers = pytest.importorskip("transformers")

SIZES = {
    "small": dict(hidden=32, layers=2, heads=4, kv_heads=2, ffn=64),
    "wide": dict(hidden=96, layers=3, heads=6, kv_heads=3, ffn=160),
    "mqa": dict(hidden=64, layers=2, heads=4, kv_heads=1, ffn=128),
}


def hf_model(family: str, size: dict, tied: bool):
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=211,
            n_embd=size["hidden"],
            n_layer=size["layers"],
            n_head=size["heads"],
            n_positions=128,
            tie_word_embeddings=tied,
            bos_token_id=0,
            eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(cfg)
    common = dict(
        vocab_size=211,
        hidden_size=size["hidden"],
        intermediate_size=size["ffn"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        num_key_value_heads=size["kv_heads"],
        max_position_embeddings=128,
        tie_word_embeddings=tied,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
    )
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=50000.0))
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))


def randomise_norms_and_biases(model) -> None:
    """Fresh norms are all ones and biases all zeros; parity must not hinge on that."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name or name.endswith("bias"):
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_logits_match_transformers(family, size, tied, tmp_path):
    reference = hf_model(family, SIZES[size], tied).eval()
    randomise_norms_and_biases(reference)
    reference.save_pretrained(tmp_path)
    llm_config, state, _ = load_hf_dir(tmp_path)
    assert llm_config.tied_embeddings == tied
    model = build_model(llm_config, state, source=str(tmp_path))
    ids = torch.randint(0, 211, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference(ids).logits
        got = model(ids)
    assert (got - expected).abs().max().item() <= 1e-4


def test_qwen2_bias_is_loaded(tmp_path):
    reference = hf_model("qwen2", SIZES["small"], tied=True)
    reference.save_pretrained(tmp_path)
    config, state, _ = load_hf_dir(tmp_path)
    assert config.attn_bias and not config.attn_out_bias
    q_bias = reference.model.layers[0].self_attn.q_proj.bias
    assert torch.equal(state["blocks.0.attn.qkv.bias"][: q_bias.numel()], q_bias)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ModelLoadError, match="model_type 'mamba' is not supported"):
        LLM.load(tmp_path)


def test_pickle_only_hf_dir_is_refused(tmp_path):
    reference = hf_model("llama", SIZES["small"], tied=True)
    reference.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle files, which we refuse to load"):
        LLM.load(tmp_path)
