"""Checkpoint directories: bit-exact round trip and a documented error for each bad file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import checkpoint
from core.config import ModelConfig
from core.generate.engine import LLM
from core.load import ModelLoadError
from core.model import Decoder
from core.tokenizer import Tokenizer

CONFIGS = {
    "classic": ModelConfig.preset(
        "classic", vocab_size=300, n_layer=2, n_head=4, n_embd=32, block_size=64
    ),
    "llama": ModelConfig.preset(
        "llama",
        vocab_size=300,
        n_layer=2,
        n_head=4,
        n_kv_head=2,
        n_embd=32,
        ffn_hidden=48,
        block_size=64,
        tied_embeddings=False,
    ),
}


@pytest.fixture(scope="module")
def tokenizer():
    text = [
        "the quick brown fox jumps over the lazy dog",
        "ScratchGPT owns every part of the stack",
    ]
    return Tokenizer.train(text * 50, vocab_size=300)


@pytest.fixture
def saved(tmp_path, tokenizer):
    torch.manual_seed(0)
    model = Decoder(CONFIGS["llama"])
    path = checkpoint.save(model, tmp_path / "ckpt", tokenizer)
    return model, path


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_round_trip_is_bit_exact(name, tmp_path, tokenizer):
    torch.manual_seed(0)
    model = Decoder(CONFIGS[name]).eval()
    path = checkpoint.save(model, tmp_path / name, tokenizer)
    assert sorted(p.name for p in path.iterdir()) >= [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    llm = LLM.load(path)
    assert llm.config == model.config
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), llm.model.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        # same values; the loaded copy may store matrices transposed, so matmuls may round
        # differently
        torch.testing.assert_close(llm.model(ids), model(ids), atol=1e-5, rtol=1e-5)
    assert llm.tokenizer.encode("the lazy fox") == tokenizer.encode("the lazy fox")


def test_saving_over_a_checkpoint_replaces_it(saved, tokenizer):
    _model, path = saved
    torch.manual_seed(1)
    other = Decoder(CONFIGS["llama"])
    checkpoint.save(other, path, tokenizer)
    reloaded = load_file(str(path / "model.safetensors"))
    assert torch.equal(reloaded["wte.weight"], other.wte.weight)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_pickle_file_is_refused(tmp_path, saved):
    model, _ = saved
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(ModelLoadError, match="pickle checkpoints are refused"):
        LLM.load(pt)
    folder = tmp_path / "pickled"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    model.config.save(folder / "config.json")
    with pytest.raises(ModelLoadError, match="pytorch_model.bin: pickle checkpoints are refused"):
        LLM.load(folder)


def test_truncated_safetensors_is_reported(saved):
    _, path = saved
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        ModelLoadError, match=r"model\.safetensors: truncated or damaged safetensors"
    ):
        LLM.load(path)


def test_shape_mismatch_names_the_tensor(saved):
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state["blocks.1.mlp.proj.weight"] = torch.zeros(32, 40)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(
        ModelLoadError, match=r"tensor 'blocks.1.mlp.proj.weight' has shape \(32, 40\)"
    ):
        LLM.load(path)


def test_config_that_does_not_match_the_weights(saved):
    _, path = saved
    config = json.loads((path / "config.json").read_text())
    config["n_layer"] = 3
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="tensor 'blocks.2.attn.proj.weight' is missing"):
        LLM.load(path)
    config["n_layer"], config["tied_embeddings"] = 2, True
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="unexpected tensor 'lm_head.weight'"):
        LLM.load(path)


def test_missing_and_unknown_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model directory"):
        LLM.load(tmp_path)
    with pytest.raises(ModelLoadError, match="no such file or directory, and not a hub id"):
        LLM.load(tmp_path / "nope" / "deeper" / "x")
    with pytest.raises(ModelLoadError, match="could not be downloaded from the hub"):
        LLM.load("someone/some-model")  # HF_HUB_OFFLINE=1 in tests: nothing touches the network


def test_bad_file_leaves_the_loaded_model_untouched(saved):
    """A failed load raises before anything is built; the model already in use is unchanged."""
    _model, path = saved
    llm = LLM.load(path)
    before = {k: v.clone() for k, v in llm.model.state_dict().items()}
    (path / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelLoadError):
        LLM.load(path)
    assert all(torch.equal(v, before[k]) for k, v in llm.model.state_dict().items())


def test_bf16_load(saved):
    _, path = saved
    llm = LLM.load(path, dtype="bf16")
    assert llm.model.wte.weight.dtype == torch.bfloat16
    with pytest.raises(ModelLoadError, match="dtype 'int3' is not supported"):
        LLM.load(path, dtype="int3")
