"""Weight-only quantization of any model we load, building a model around packed matrices, and
writing GGUF files.

`quantize_state` turns the dense matrices of a state dict into GGUF blocks (`Packed`): "int8" is
Q8_0 (int8 per block of 32 with an fp16 scale), "q4" is Q4_1 (4 bits per weight, a scale and a
minimum per block of 32), and the GGUF type names ask for one type; Q8_0, Q4_0 and Q4_1 use gguf's
reference quantizers (what llama.cpp writes), Q4_K and Q6_K ours below (plain min/max rounding,
not llama.cpp's searched scales). Under 4-bit types the token embedding (also the tied LM head)
gets Q6_K, or Q8_0 where rows are not whole 256-blocks, as llama.cpp's Q4_K_M does: the logits are
the most sensitive product. `packed_model` builds a `Decoder` whose packed matrices are
`QuantLinear` / `QuantEmbedding`; `write_gguf` saves a state as a GGUF file llama.cpp can read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from core.config import ModelConfig
from core.kernels.quant import QuantEmbedding, QuantLinear
from core.model import Decoder, NoInit
from core.weights import PACKED_TYPES, Packed

ALIASES = {"int8": "Q8_0", "q4": "Q4_1"}
QUANTIZERS = ("Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")  # the packed types we can write


def _f16(values: np.ndarray) -> np.ndarray:
    """(..., 1) values -> (..., 2) bytes of their fp16."""
    return values.astype(np.float16).view(np.uint8)


def quantize_q4_k(w: np.ndarray) -> np.ndarray:
    """(N, K) fp32, K a multiple of 256 -> Q4_K blocks (N, K / 256 * 144) uint8.

    Per 32 weights: scale = (max - min) / 15 and min (at most 0), both as 6-bit multiples of the
    256-block's fp16 `d` and `dmin`; quants are rounded against the scales as stored."""
    n, k = w.shape
    x = w.astype(np.float32).reshape(n, k // 256, 8, 32)
    lo = np.minimum(x.min(-1), 0.0)  # (n, nb, 8): Q4_K subtracts a non-negative minimum
    scale = (x.max(-1) - lo) / 15
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)  # (n, nb)
    dmin = (-lo.min(-1) / 63).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[..., None] > 0, np.rint(scale / d[..., None]), 0).clip(0, 63)
        mn = np.where(dmin[..., None] > 0, np.rint(-lo / dmin[..., None]), 0).clip(0, 63)
        step = (d[..., None] * sc)[..., None]  # (n, nb, 8, 1): the scales as dequantized
        shift = (dmin[..., None] * mn)[..., None]
        q = np.where(step > 0, np.rint((x + shift) / step), 0).clip(0, 15).astype(np.uint8)
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    scales = np.empty((n, k // 256, 12), np.uint8)  # llama.cpp's 12-byte packing of 6-bit pairs
    scales[..., 0:4] = (sc[..., :4] & 63) | ((sc[..., 4:] >> 4) << 6)
    scales[..., 4:8] = (mn[..., :4] & 63) | ((mn[..., 4:] >> 4) << 6)
    scales[..., 8:12] = (sc[..., 4:] & 0xF) | ((mn[..., 4:] & 0xF) << 4)
    q = q.reshape(n, k // 256, 4, 2, 32)  # 64-weight chunks: first 32 low nibbles, next 32 high
    qs = (q[:, :, :, 0] | (q[:, :, :, 1] << 4)).reshape(n, k // 256, 128)
    blocks = np.concatenate([_f16(d[..., None]), _f16(dmin[..., None]), scales, qs], -1)
    return blocks.reshape(n, -1)


def quantize_q6_k(w: np.ndarray) -> np.ndarray:
    """(N, K) fp32, K a multiple of 256 -> Q6_K blocks (N, K / 256 * 210) uint8: per 16 weights
    an int8 multiple of the block's fp16 `d` as scale, quants -32..31 in 4 + 2 bits."""
    n, k = w.shape
    x = w.astype(np.float32).reshape(n, k // 256, 16, 16)
    scale = np.abs(x).max(-1) / 31  # (n, nb, 16)
    d = (scale.max(-1) / 127).astype(np.float16).astype(np.float32)  # (n, nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(d[..., None] > 0, np.rint(scale / d[..., None]), 0).clip(0, 127)
        step = (d[..., None] * sc)[..., None]
        q = np.where(step > 0, np.rint(x / step), 0).clip(-32, 31)
    u = (q + 32).astype(np.uint8).reshape(n, k // 256, 2, 4, 32)  # halves of 128, four 32-runs
    ql = np.concatenate(
        [
            u[:, :, :, 0] & 15 | (u[:, :, :, 2] & 15) << 4,
            u[:, :, :, 1] & 15 | (u[:, :, :, 3] & 15) << 4,
        ],
        -1,
    )  # (n, nb, 2, 64)
    qh = u[:, :, :, 0] >> 4 | (u[:, :, :, 1] >> 4) << 2 | (u[:, :, :, 2] >> 4) << 4
    qh = qh | (u[:, :, :, 3] >> 4) << 6  # (n, nb, 2, 32)
    blocks = [
        ql.reshape(n, k // 256, 128),
        qh.reshape(n, k // 256, 64),
        sc.astype(np.int8).view(np.uint8),
        _f16(d[..., None]),
    ]
    return np.concatenate(blocks, -1).reshape(n, -1)


def quantize_matrix(w: torch.Tensor, qtype: str) -> Packed:
    """A dense (N, K) matrix in block type `qtype` (one of QUANTIZERS)."""
    dense = w.detach().float().cpu().numpy()
    if qtype in ("Q4_K", "Q6_K"):
        quantizer = quantize_q4_k if qtype == "Q4_K" else quantize_q6_k
        return Packed.of(qtype, quantizer(dense), dense.shape[1])
    import gguf

    blocks = gguf.quants.quantize(dense, gguf.GGMLQuantizationType[qtype])
    return Packed.of(qtype, blocks, dense.shape[1])


def resolve(kind: str) -> str:
    """ "int8" / "q4" / a type name -> the GGUF type name; ValueError for anything else."""
    qtype = ALIASES.get(kind, kind)
    if qtype not in QUANTIZERS:
        raise ValueError(
            f"quantize={kind!r} is not supported; use one of {[*ALIASES, *QUANTIZERS]}."
        )
    return qtype


def quantize_state(state: dict, kind: str) -> dict:
    """Every matrix of `state` (dense or packed) in the block type `kind` names; rows of other
    lengths than a multiple of the block stay as they are."""
    qtype = resolve(kind)
    out = {}
    for name, value in state.items():
        want = qtype
        if name == "wte.weight" and qtype in ("Q4_0", "Q4_1", "Q4_K"):
            want = "Q6_K" if value.shape[1] % 256 == 0 else "Q8_0"
        block = PACKED_TYPES[want][0]
        matrix = isinstance(value, Packed) or (value.dim() == 2 and not name.startswith("wpe"))
        done = isinstance(value, Packed) and {t for t, _ in value.parts} == {want}
        if not matrix or value.shape[1] % block or done:
            out[name] = value
        else:
            dense = value.dequantize() if isinstance(value, Packed) else value
            out[name] = quantize_matrix(dense, want)
    return out


def packed_model(config: ModelConfig, state: dict, dtype: torch.dtype) -> Decoder:
    """A `Decoder` (eval mode, CPU) whose `Packed` matrices become QuantLinear / QuantEmbedding;
    the dense tensors (norms, biases, matrices of other types) load as usual, in `dtype`."""
    from accelerate import init_empty_weights

    from core.checkpoint import check_state

    # names and shapes checked as for dense weights (packed ones by their logical shape)
    meta = {k: torch.empty(v.shape, device="meta") for k, v in state.items()}
    check_state(config, meta, config.name)
    with init_empty_weights(), NoInit():  # parameters on the meta device, left uninitialised
        model = Decoder(config)
    dense = {k: v for k, v in state.items() if not isinstance(v, Packed)}
    for name, value in state.items():
        if not isinstance(value, Packed):
            continue
        path = name.removesuffix(".weight")
        parent, _, attr = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if path == "wte":
            setattr(owner, attr, QuantEmbedding(value))
        else:
            setattr(owner, attr, QuantLinear(value, dense.get(path + ".bias")))
    model.load_state_dict(
        {k: v.to(torch.float32 if v.dim() == 1 else dtype) for k, v in dense.items()},
        strict=True,
        assign=True,
    )
    return model.eval()


def write_gguf(
    path: str | Path, config: ModelConfig, state: dict, tokenizer_from: str | Path
) -> Path:
    """Save `state` (our names; dense tensors or `Packed`) of a llama / qwen2 `config` as a GGUF
    file, with the tokenizer of the GGUF at `tokenizer_from`. Benchmarks build models of any
    shape with it (no download); `core.weights.load_gguf` reads it back."""
    import gguf

    arch, c = config.name, config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(c.n_layer)
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_feed_forward_length(c.ffn_hidden)
    writer.add_head_count(c.n_head)
    writer.add_head_count_kv(c.n_kv_head)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_vocab_size(c.vocab_size)
    for key, field in gguf.GGUFReader(str(tokenizer_from)).fields.items():
        if key.startswith("tokenizer."):
            sub = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)

    def add(name: str, value) -> None:
        if isinstance(value, Packed):
            (qtype, data), *rest = value.parts
            if rest:
                raise ValueError(f"{name}: one block type per GGUF tensor")
            writer.add_tensor(name, data.numpy(), raw_dtype=gguf.GGMLQuantizationType[qtype])
        else:
            writer.add_tensor(name, value.detach().float().numpy())

    def split(value, sizes: list[int], permute: list[int | None]) -> list:
        out, at = [], 0
        for size, n_head in zip(sizes, permute, strict=True):
            part = value.rows(at, at + size) if isinstance(value, Packed) else value[at : at + size]
            out.append(_permute(part, n_head) if n_head and arch == "llama" else part)
            at += size
        return out

    add("token_embd.weight", state["wte.weight"])
    add("output_norm.weight", state["ln_f.weight"])
    if not c.tied_embeddings:
        add("output.weight", state["lm_head.weight"])
    q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    for i in range(c.n_layer):
        a, b = f"blocks.{i}.", f"blk.{i}."
        add(b + "attn_norm.weight", state[a + "ln_1.weight"])
        add(b + "ffn_norm.weight", state[a + "ln_2.weight"])
        heads = [c.n_head, c.n_kv_head, None]
        for part, name in zip(
            split(state[a + "attn.qkv.weight"], [q, kv, kv], heads), "qkv", strict=True
        ):
            add(f"{b}attn_{name}.weight", part)
        if c.attn_bias:
            for part, name in zip(
                split(state[a + "attn.qkv.bias"], [q, kv, kv], heads), "qkv", strict=True
            ):
                add(f"{b}attn_{name}.bias", part)
        add(b + "attn_output.weight", state[a + "attn.proj.weight"])
        gate, up = split(state[a + "mlp.fc.weight"], [c.ffn_hidden] * 2, [None, None])
        add(b + "ffn_gate.weight", gate)
        add(b + "ffn_up.weight", up)
        add(b + "ffn_down.weight", state[a + "mlp.proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def _permute(value, n_head: int):
    """llama.cpp's Q/K row order (the inverse of `core.weights._unpermute`)."""
    if isinstance(value, Packed):
        (qtype, data), k = value.parts[0], value.shape[1]
        return Packed.of(qtype, _permute(data.numpy(), n_head), k)
    rows = value.shape[0]
    shaped = value.reshape(n_head, 2, rows // n_head // 2, *value.shape[1:])
    return shaped.swapaxes(1, 2).reshape(value.shape)
