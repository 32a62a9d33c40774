"""The embedder's int8 encoder on ONNX Runtime (what `Embedder(precision="int8")` runs when
`onnxruntime` and `onnx` are installed; torch's fbgemm kernels otherwise).

The BERT encoder inside the SentenceTransformer is exported once to ONNX (fp32, dynamic batch
and sequence axes), then quantised by `onnxruntime.quantization.quantize_dynamic`: int8 weights
per output channel, activations quantised per call at run time. The result is cached under
~/.cache/scratchgpt/embeddings (SCRATCHGPT_CACHE moves it), named by a hash of the model files'
names, sizes and times and the exporter versions, and written atomically, so concurrent first
uses are safe. Tokenisation, pooling and normalisation stay the SentenceTransformer's own modules.

Why: on AVX2 CPUs without VNNI its fused int8 attention/GELU/LayerNorm graph runs a text faster
than torch's dynamic int8, and its vectors are closer to fp32 (figures: bench/README.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXPORT_FORMAT = 1  # bump when the export or quantisation settings change
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def cache_dir() -> Path:
    root = os.environ.get("SCRATCHGPT_CACHE") or Path.home() / ".cache" / "scratchgpt"
    return Path(root) / "embeddings"


def _key(model_path: str) -> str:
    import onnxruntime
    import torch

    digest = hashlib.sha256(
        f"{EXPORT_FORMAT}:{torch.__version__}:{onnxruntime.__version__}".encode()
    )
    for path in sorted(Path(model_path).rglob("*")):  # names, sizes, times: no 90 MB re-read
        if path.is_file() and path.suffix in (".json", ".safetensors", ".txt", ".bin"):
            stat = path.stat()
            name = path.relative_to(model_path).as_posix()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def quantized_model(st_model: Any, model_path: str) -> Path:
    """The cached int8 ONNX file of `st_model`'s encoder, exported and quantised on first use."""
    target = cache_dir() / f"minilm-{_key(model_path)}-int8.onnx"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        fp32, int8 = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        _export(st_model, fp32)
        _quantize(fp32, int8)
        os.replace(int8, target)
    return target


def _export(st_model: Any, path: Path) -> None:
    import torch

    bert = st_model[0].auto_model

    class Encoder(torch.nn.Module):  # positional inputs, one tensor out: traces cleanly
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.last_hidden_state

    before = bert.config._attn_implementation
    # ONNX Runtime fuses the eager attention graph into its Attention kernel; sdpa's it does not
    bert.set_attn_implementation("eager")
    try:
        sample = st_model.preprocess(["An example sentence.", "Another, longer example sentence."])
        args = tuple(sample[name] for name in INPUTS)
        axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encoder().eval(),
                args,
                str(path),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,
                do_constant_folding=True,
            )
    finally:
        bert.set_attn_implementation(before)


def _quantize(fp32: Path, int8: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():  # and its advice to pre-process, logged on the root logger
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(
                str(fp32),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
            )
        finally:
            logging.disable(logging.NOTSET)


class Session:
    """One ONNX Runtime session; `run` is thread-safe and runs on the calling thread."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the Embedder spreads texts over its own workers
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def token_embeddings(self, features: dict[str, Any]) -> np.ndarray:
        feed = {name: features[name].numpy().astype(np.int64) for name in self.inputs}
        return self.session.run(["last_hidden_state"], feed)[0]
