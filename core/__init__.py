"""ScratchGPT's model: config, layers, decoder, tokenizer, weights import, checkpoints, loading."""

from core.config import ConfigError, ModelConfig
from core.model import ContextLengthError, Decoder

__all__ = ["ConfigError", "ContextLengthError", "Decoder", "ModelConfig"]
