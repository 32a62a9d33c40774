"""Open-weight import: GGUF files and Hugging Face checkpoint dirs -> our config + state dict.

Every importer returns `(ModelConfig, state_dict, Tokenizer | None)` with tensors named as in
`core.model.Decoder`; `core.checkpoint.build_model` turns that into a model. Q, K and V (and the
SwiGLU gate and up matrices) are stacked into the single matrices our layers use.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.config import ConfigError, ModelConfig
from core.gguf_file import PACKED_TYPES, Packed

Tensors = dict[str, torch.Tensor]


class WeightsError(ValueError):
    """Open weights that cannot be imported; the message names the file and, if any, the tensor."""


# --- Hugging Face checkpoint directories -----------------------------------------------------
HF_ARCHS = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "mistral": "llama"}


def _rope_theta(hf: dict[str, Any], path: Path) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind != "default":
        raise WeightsError(f"{path}: rope type {kind!r} is not supported yet (only plain RoPE).")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def config_from_hf(hf: dict[str, Any], path: Path) -> tuple[str, ModelConfig]:
    """Map a transformers `config.json` onto a `ModelConfig`; returns (family, config)."""
    family = HF_ARCHS.get(hf.get("model_type", ""))
    if family is None:
        raise WeightsError(
            f"{path}: model_type {hf.get('model_type')!r} is not supported; "
            f"supported: {sorted(HF_ARCHS)}."
        )
    try:
        if family == "gpt2":
            act = hf.get("activation_function", "gelu_new")
            acts = {
                "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh",
                "gelu": "gelu",
                "relu": "relu",
            }
            if (
                act not in acts
                or hf.get("scale_attn_by_inverse_layer_idx")
                or not hf.get("scale_attn_weights", True)
            ):
                raise WeightsError(
                    f"{path}: this GPT-2 variant (activation {act!r}, attention scaling) "
                    "is not supported."
                )
            config = ModelConfig(
                vocab_size=hf["vocab_size"],
                n_layer=hf["n_layer"],
                n_head=hf["n_head"],
                n_embd=hf["n_embd"],
                ffn_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
                block_size=hf["n_positions"],
                norm="layernorm",
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                position="learned",
                activation=acts[act],
                attn_bias=True,
                attn_out_bias=True,
                mlp_bias=True,
                tied_embeddings=hf.get("tie_word_embeddings", True),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=_first(hf.get("eos_token_id")),
                name="gpt2",
            )
        else:
            if hf.get("hidden_act", "silu") != "silu":
                raise WeightsError(
                    f"{path}: hidden_act {hf['hidden_act']!r} is not supported (silu only)."
                )
            if hf.get("use_sliding_window"):
                raise WeightsError(f"{path}: sliding-window attention is not supported.")
            n_head = hf["num_attention_heads"]
            config = ModelConfig(
                vocab_size=hf["vocab_size"],
                n_layer=hf["num_hidden_layers"],
                n_head=n_head,
                n_kv_head=hf.get("num_key_value_heads") or n_head,
                n_embd=hf["hidden_size"],
                head_dim=hf.get("head_dim") or hf["hidden_size"] // n_head,
                ffn_hidden=hf["intermediate_size"],
                block_size=hf.get("max_position_embeddings", 2048),
                norm="rmsnorm",
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                position="rope",
                rope_theta=_rope_theta(hf, path),
                activation="swiglu",
                attn_bias=family == "qwen2" or bool(hf.get("attention_bias")),
                attn_out_bias=bool(hf.get("attention_bias")),
                mlp_bias=bool(hf.get("mlp_bias")),
                norm_bias=False,
                tied_embeddings=hf.get("tie_word_embeddings", False),
                bos_token_id=hf.get("bos_token_id"),
                eos_token_id=_first(hf.get("eos_token_id")),
                name=family,
            )
    except KeyError as err:
        raise WeightsError(f"{path}: config.json lacks the field {err.args[0]!r}.") from err
    except ConfigError as err:
        raise WeightsError(f"{path}: {err}") from err
    return family, config


def _first(value: Any) -> int | None:
    return value[0] if isinstance(value, list) and value else value


def _safetensors_reader(directory: Path) -> Callable[[str], torch.Tensor | None]:
    """A lookup name -> tensor over `model.safetensors` or a sharded index; None if absent."""
    from safetensors import SafetensorError, safe_open

    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        pickled = [p.name for p in directory.glob("*.bin")] + [
            p.name for p in directory.glob("*.pt*")
        ]
        hint = (
            f" ({', '.join(pickled)} are pickle files, which we refuse to load)" if pickled else ""
        )
        raise WeightsError(
            f"{directory}: no model.safetensors found{hint}; convert the weights to safetensors."
        )
    handles, owner = [], {}
    for name in files:
        try:
            handle = safe_open(str(directory / name), framework="pt")
        except (SafetensorError, OSError) as err:
            raise WeightsError(
                f"{directory / name}: not a readable safetensors file ({err})."
            ) from err
        handles.append(handle)
        owner.update({key: handle for key in handle.keys()})  # noqa: SIM118 (not a dict)

    def get(key: str) -> torch.Tensor | None:
        handle = owner.get(key)
        try:
            # clone: tensors must not stay backed by a file that may be replaced under us
            return None if handle is None else handle.get_tensor(key).clone()
        except Exception as err:  # safetensors raises several types for damaged data
            raise WeightsError(f"{directory}: tensor {key!r} cannot be read ({err}).") from err

    return get


def load_hf_dir(path: str | Path) -> tuple[ModelConfig, Tensors, Any]:
    """Import a Hugging Face checkpoint directory (config.json + safetensors)."""
    from core.tokenizer import Tokenizer

    directory = Path(path)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise WeightsError(
            f"{directory}: no config.json; is this a Hugging Face checkpoint directory?"
        )
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise WeightsError(f"{config_path}: not valid JSON ({err}).") from err
    family, config = config_from_hf(hf, config_path)
    get = _safetensors_reader(directory)
    state = _convert_gpt2(config, get) if family == "gpt2" else _convert_llama(config, get)
    tokenizer = Tokenizer.from_dir(directory) if (directory / "tokenizer.json").exists() else None
    return config, state, tokenizer


def _require(get: Callable[[str], torch.Tensor | None], *names: str) -> torch.Tensor:
    """The first of `names` that exists (GPT-2 files come with and without `transformer.`)."""
    for name in names:
        tensor = get(name)
        if tensor is not None:
            return tensor
    raise WeightsError(f"the checkpoint lacks tensor {names[0]!r}.")


def _convert_llama(config: ModelConfig, get: Callable[[str], torch.Tensor | None]) -> Tensors:
    def t(name: str) -> torch.Tensor:
        return _require(get, "model." + name, name)

    state = {"wte.weight": t("embed_tokens.weight"), "ln_f.weight": t("norm.weight")}
    for i in range(config.n_layer):
        p, a = f"layers.{i}.", f"blocks.{i}."
        attn = [t(f"{p}self_attn.{x}_proj.weight") for x in "qkv"]
        state |= {
            a + "ln_1.weight": t(p + "input_layernorm.weight"),
            a + "ln_2.weight": t(p + "post_attention_layernorm.weight"),
            a + "attn.qkv.weight": torch.cat(attn),
            a + "attn.proj.weight": t(p + "self_attn.o_proj.weight"),
            a + "mlp.fc.weight": torch.cat(
                [t(p + "mlp.gate_proj.weight"), t(p + "mlp.up_proj.weight")]
            ),
            a + "mlp.proj.weight": t(p + "mlp.down_proj.weight"),
        }
        if config.attn_bias:
            state[a + "attn.qkv.bias"] = torch.cat(
                [t(f"{p}self_attn.{x}_proj.bias") for x in "qkv"]
            )
        if config.attn_out_bias:
            state[a + "attn.proj.bias"] = t(p + "self_attn.o_proj.bias")
        if config.mlp_bias:
            state[a + "mlp.fc.bias"] = torch.cat(
                [t(p + "mlp.gate_proj.bias"), t(p + "mlp.up_proj.bias")]
            )
            state[a + "mlp.proj.bias"] = t(p + "mlp.down_proj.bias")
    if not config.tied_embeddings:
        state["lm_head.weight"] = _require(get, "lm_head.weight")
    return state


def _convert_gpt2(config: ModelConfig, get: Callable[[str], torch.Tensor | None]) -> Tensors:
    def t(name: str) -> torch.Tensor:
        return _require(get, "transformer." + name, name)

    state = {
        "wte.weight": t("wte.weight"),
        "wpe.weight": t("wpe.weight"),
        "ln_f.weight": t("ln_f.weight"),
        "ln_f.bias": t("ln_f.bias"),
    }
    for i in range(config.n_layer):
        p, a = f"h.{i}.", f"blocks.{i}."
        for ours, theirs in [("ln_1", "ln_1"), ("ln_2", "ln_2")]:
            state[f"{a}{ours}.weight"] = t(f"{p}{theirs}.weight")
            state[f"{a}{ours}.bias"] = t(f"{p}{theirs}.bias")
        # GPT-2's Conv1D stores weights as (in, out): transpose to nn.Linear's (out, in).
        for ours, theirs in [
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("mlp.fc", "mlp.c_fc"),
            ("mlp.proj", "mlp.c_proj"),
        ]:
            state[f"{a}{ours}.weight"] = t(f"{p}{theirs}.weight").t().contiguous()
            state[f"{a}{ours}.bias"] = t(f"{p}{theirs}.bias")
    if not config.tied_embeddings:
        state["lm_head.weight"] = _require(get, "lm_head.weight")
    return state


# --- GGUF ------------------------------------------------------------------------------------
GGUF_ARCHS = ("llama", "qwen2")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def config_from_gguf(reader: Any, path: Path) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in GGUF_ARCHS:
        raise WeightsError(
            f"{path}: GGUF architecture {arch!r} is not supported; supported: {GGUF_ARCHS}."
        )

    def meta(key: str, default: Any = None) -> Any:
        value = _field(reader, f"{arch}.{key}", default)
        if value is None:
            raise WeightsError(f"{path}: GGUF metadata lacks {arch}.{key}.")
        return value

    names = {t.name for t in reader.tensors}
    vocab = _field(reader, f"{arch}.vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    n_head, n_embd = meta("attention.head_count"), meta("embedding_length")
    try:
        return ModelConfig(
            vocab_size=int(vocab),
            n_layer=meta("block_count"),
            n_head=n_head,
            n_kv_head=meta("attention.head_count_kv", n_head),
            n_embd=n_embd,
            head_dim=meta("rope.dimension_count", n_embd // n_head),
            ffn_hidden=meta("feed_forward_length"),
            block_size=meta("context_length"),
            norm="rmsnorm",
            norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
            position="rope",
            rope_theta=float(meta("rope.freq_base", 10000.0)),
            activation="swiglu",
            attn_bias="blk.0.attn_q.bias" in names,
            norm_bias=False,
            tied_embeddings="output.weight" not in names,
            bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
            name=arch,
        )
    except ConfigError as err:
        raise WeightsError(f"{path}: {err}") from err


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved RoPE pairs back to rotate-half halves)."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _stack(items: list[np.ndarray | Packed]) -> np.ndarray | Packed:
    """Rows stacked (Q, K, V; gate, up): packed if every part is, else dense fp32."""
    if all(isinstance(i, Packed) for i in items):
        return Packed.cat(items)
    return np.concatenate([i.dequantize().numpy() if isinstance(i, Packed) else i for i in items])


def load_gguf(
    path: str | Path, keep_quantized: bool = False
) -> tuple[ModelConfig, dict[str, torch.Tensor | Packed], Any]:
    """Import a GGUF file and map names onto ours: every tensor dequantized to float32, or with
    `keep_quantized` the matrices in `PACKED_TYPES` kept as their blocks (`Packed`)."""
    import struct

    import gguf

    from core.gguf_file import Reader
    from core.tokenizer import Tokenizer

    path = Path(path)
    try:
        reader = Reader(path)
    except (ValueError, OSError, IndexError, KeyError, struct.error) as err:
        raise WeightsError(f"{path}: not a readable GGUF file ({err}).") from err
    config = config_from_gguf(reader, path)
    arch = config.name
    raw = {t.name: t for t in reader.tensors}

    def t(name: str) -> np.ndarray | Packed:
        if name not in raw:
            raise WeightsError(f"{path}: the GGUF lacks tensor {name!r}.")
        tensor = raw[name]
        if keep_quantized and tensor.tensor_type.name in PACKED_TYPES and len(tensor.shape) == 2:
            return Packed.of(tensor.tensor_type.name, tensor.data, int(tensor.shape[0]), copy=False)
        try:
            value = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            return np.ascontiguousarray(value, dtype=np.float32)
        except (NotImplementedError, ValueError) as err:
            raise WeightsError(
                f"{path}: tensor {name!r} ({tensor.tensor_type.name}) "
                f"cannot be dequantized ({err})."
            ) from err

    def qk(name: str, n_head: int) -> np.ndarray | Packed:
        # llama.cpp permutes llama-family Q/K for its interleaved RoPE; qwen2 is stored as is
        value = t(name)
        if arch != "llama":
            return value
        if isinstance(value, Packed):  # whole rows move: the packed blocks permute alike
            (qtype, data), k = value.parts[0], value.shape[1]
            return Packed.of(qtype, _unpermute(data.numpy(), n_head), k)
        return _unpermute(value, n_head)

    state: dict[str, np.ndarray | Packed] = {
        "wte.weight": t("token_embd.weight"),
        "ln_f.weight": t("output_norm.weight"),
    }
    for i in range(config.n_layer):
        p, a = f"blk.{i}.", f"blocks.{i}."
        q, k = qk(p + "attn_q.weight", config.n_head), qk(p + "attn_k.weight", config.n_kv_head)
        state |= {
            a + "ln_1.weight": t(p + "attn_norm.weight"),
            a + "ln_2.weight": t(p + "ffn_norm.weight"),
            a + "attn.qkv.weight": _stack([q, k, t(p + "attn_v.weight")]),
            a + "attn.proj.weight": t(p + "attn_output.weight"),
            a + "mlp.fc.weight": _stack([t(p + "ffn_gate.weight"), t(p + "ffn_up.weight")]),
            a + "mlp.proj.weight": t(p + "ffn_down.weight"),
        }
        if config.attn_bias:
            qb = qk(p + "attn_q.bias", config.n_head)
            kb = qk(p + "attn_k.bias", config.n_kv_head)
            state[a + "attn.qkv.bias"] = np.concatenate([qb, kb, t(p + "attn_v.bias")])
    if not config.tied_embeddings:
        state["lm_head.weight"] = t("output.weight")
    # F32 tensors come straight from the read-only memory map: copy those, share the rest.
    tensors = {
        k: v if isinstance(v, Packed) else torch.from_numpy(v if v.flags.writeable else v.copy())
        for k, v in state.items()
    }
    return config, tensors, Tokenizer.from_gguf(reader)
