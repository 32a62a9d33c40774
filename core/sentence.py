"""`SentenceEncoder`: sentence embeddings from our own `Encoder`, interchangeable with
`ingest.embeddings.Embedder` (same constructor keywords, `encode`, Chroma's `EmbeddingFunction`
protocol). Loaded with all-MiniLM-L6-v2 it gives the library's vectors (cosine >= 0.9999), so a
store indexed by either can be searched by the other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from core.bert_weights import encode_batch, load_encoder, max_seq_length, minilm_path
from core.encoder import sentence_embeddings

MINILM_NAME = "all-MiniLM-L6-v2"
PRECISIONS = ("fp32", "bf16")


class SentenceEncoder(EmbeddingFunction[Documents]):
    """Texts -> unit-length float32 vectors of `dimension` floats, computed by `core.encoder`."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        device: str = "cpu",
        precision: str = "fp32",
        batch_size: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.model_path = str(model_path or minilm_path())
        directory = Path(self.model_path)
        self.model, tokenizer = load_encoder(directory, device=device)
        if tokenizer is None:
            raise ValueError(f"{directory}: no tokenizer.json; an embedder needs one.")
        self.tokenizer = tokenizer
        self.device, self.precision = device, precision
        self.batch_size = batch_size or 32
        self.dimension = self.model.config.n_embd
        self.max_tokens = max_seq_length(directory, self.model.config)
        self._name = MINILM_NAME if directory == minilm_path() else directory.name

    def name(self) -> str:
        return self._name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) texts -> (N, dimension) float32, normalised; longest first, as the library does,
        so that each batch pads little."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            batch = order[start : start + self.batch_size]
            out[batch] = self._embed([texts[j] for j in batch])
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        ids, mask = encode_batch(
            self.tokenizer, texts, self.max_tokens, self.model.config.pad_token_id
        )
        with self._autocast():
            vectors = sentence_embeddings(self.model, ids.to(self.device), mask.to(self.device))
        return vectors.float().cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision != "bf16":
            return contextlib.nullcontext()
        kind = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(kind, dtype=torch.bfloat16)

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.encode(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return self(input)

    def get_config(self) -> dict[str, Any]:
        return {"model_path": self.model_path, "precision": self.precision, "encoder": "ours"}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> SentenceEncoder:
        return SentenceEncoder(config.get("model_path"), precision=config.get("precision", "fp32"))

    def default_space(self) -> str:
        return "cosine"

    def supported_spaces(self) -> list[str]:
        return ["cosine"]
