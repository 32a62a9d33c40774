"""`ModelConfig`: one JSON-serialisable dataclass describing every architecture we run."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("sinusoidal", "learned", "rope")
# gelu is the exact erf form; gelu_tanh is the tanh approximation GPT-2 was trained with.
ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "swiglu")


class ConfigError(ValueError):
    """A model configuration that cannot describe a working model."""


@dataclass
class ModelConfig:
    """Shape and flavour of a decoder-only transformer."""

    vocab_size: int = 50257
    n_layer: int = 6
    n_head: int = 8
    n_kv_head: int | None = None  # None: same as n_head (multi-head); fewer: grouped-query
    n_embd: int = 512
    head_dim: int | None = None  # None: n_embd // n_head
    ffn_hidden: int | None = None  # None: 4 * n_embd
    block_size: int = 1024  # context length
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    position: str = "sinusoidal"
    rope_theta: float = 10000.0
    activation: str = "relu"
    attn_bias: bool = False  # bias on the Q, K, V projections
    attn_out_bias: bool = False  # bias on the output projection W_O
    mlp_bias: bool = False
    norm_bias: bool = True  # LayerNorm's beta; RMSNorm has none
    tied_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.head_dim is None:
            self.head_dim = self.n_embd // self.n_head if self.n_head else 0
        if self.ffn_hidden is None:
            self.ffn_hidden = 4 * self.n_embd
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigError` with a sentence naming the bad field."""
        for field in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "ffn_hidden"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}.")
        if self.n_kv_head <= 0 or self.n_head % self.n_kv_head:
            raise ConfigError(
                f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})."
            )
        if self.head_dim <= 0:
            raise ConfigError(f"head_dim must be positive, got {self.head_dim}.")
        if self.norm not in NORMS:
            raise ConfigError(f"norm must be one of {NORMS}, got {self.norm!r}.")
        if self.position not in POSITIONS:
            raise ConfigError(f"position must be one of {POSITIONS}, got {self.position!r}.")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if self.position == "rope" and self.head_dim % 2:
            raise ConfigError(f"rotary positions need an even head_dim, got {self.head_dim}.")
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ConfigError(f"sinusoidal positions need an even n_embd, got {self.n_embd}.")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps must be positive, got {self.norm_eps}.")

    # --- JSON round trip -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config field(s) {unknown}; known fields are {sorted(known)}."
            )
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config is not valid JSON: {err}.") from err
        if not isinstance(data, dict):
            raise ConfigError("config JSON must be an object of field names to values.")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err

    # --- presets ---------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """A named architecture (`classic`, `gpt2`, `llama`) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
        return cls.from_dict({**PRESETS[name], "name": name, **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    # The seed's transformer: sinusoidal positions, LayerNorm, ReLU FFN, multi-head attention.
    "classic": dict(
        vocab_size=8192,
        n_layer=6,
        n_head=8,
        n_embd=512,
        block_size=512,
        norm="layernorm",
        position="sinusoidal",
        activation="relu",
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tied_embeddings=True,
    ),
    # GPT-2 small (124M).
    "gpt2": dict(
        vocab_size=50257,
        n_layer=12,
        n_head=12,
        n_embd=768,
        block_size=1024,
        norm="layernorm",
        position="learned",
        activation="gelu_tanh",
        attn_bias=True,
        attn_out_bias=True,
        mlp_bias=True,
        tied_embeddings=True,
    ),
    # Llama family at SmolLM2-135M's shape: RMSNorm, RoPE, SwiGLU, grouped-query attention.
    "llama": dict(
        vocab_size=49152,
        n_layer=30,
        n_head=9,
        n_kv_head=3,
        n_embd=576,
        ffn_hidden=1536,
        block_size=8192,
        norm="rmsnorm",
        norm_eps=1e-5,
        position="rope",
        rope_theta=100000.0,
        activation="swiglu",
        norm_bias=False,
        tied_embeddings=True,
    ),
}
