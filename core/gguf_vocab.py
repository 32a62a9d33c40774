"""A GGUF's byte-level BPE vocabulary (`tokenizer.ggml.*`) as a `tokenizers` backend: the
pre-tokenizer its `pre` names, tokens respelled in the byte alphabet, control and user-defined
tokens added whole. `core.tokenizer.Tokenizer.from_gguf` wraps the result."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers

# GGUF `tokenizer.ggml.pre` -> how text is split before BPE. The model's merges were learned on
# those pieces, so the wrong split gives valid but different (worse) ids.
_GPT2_PRE = ("default", "gpt2", "gpt-2", "phi-2", "olmo", "mpt")
_DIGITS_PRE = ("smollm", "starcoder", "refact")  # each digit its own piece, then GPT-2 regex
_SPLIT = (  # Llama 3's regex; Qwen2's differs only in taking digits one at a time
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|DIGITS"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT, _QWEN2_SPLIT = (
    _SPLIT.replace("DIGITS", r"\p{N}{1,3}"),
    _SPLIT.replace("DIGITS", r"\p{N}"),
)
_SPLIT_PRE = {"llama3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
_GGUF_CONTROL, _GGUF_USER_DEFINED = 3, 4  # llama.cpp token types
_BYTE_SPELLER = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)  # no split


def backend(
    meta: Callable[[str], Any], tokens: list[str], merges: list[str]
) -> tuple[tokenizers.Tokenizer, str | None, str | None]:
    """(backend, bos token, eos token) from the `tokenizer.*` metadata reader `meta`."""
    tokens = _respell_bytes(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    result = tokenizers.Tokenizer(models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges]))
    result.pre_tokenizer = _gguf_pre_tokenizer(meta("ggml.pre"))
    result.decoder = decoders.ByteLevel()
    _add_gguf_tokens(result, tokens, meta("ggml.token_type") or [])
    bos, eos = (_token_at(tokens, meta(f"ggml.{k}_token_id")) for k in ("bos", "eos"))
    return result, bos, eos


def _gguf_pre_tokenizer(name: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name is None or name in _GPT2_PRE:
        return byte_level
    if name in _DIGITS_PRE:  # the same chain as SmolLM2's own tokenizer.json
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if name in _SPLIT_PRE:
        split = pre_tokenizers.Split(Regex(_SPLIT_PRE[name]), behavior="isolated")
        return pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    known = sorted({*_GPT2_PRE, *_DIGITS_PRE, *_SPLIT_PRE})
    raise ValueError(
        f"unknown GGUF pre-tokenizer {name!r} (tokenizer.ggml.pre); supported: {', '.join(known)}."
    )


def _respell_bytes(tokens: list[str]) -> list[str]:
    """Some exporters store a token as raw text; BPE needs it in the byte alphabet (as merges)."""
    alphabet, spell = set(pre_tokenizers.ByteLevel.alphabet()), _BYTE_SPELLER.pre_tokenize_str
    return [t if set(t) <= alphabet else spell(t)[0][0] for t in tokens]


def _add_gguf_tokens(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    """CONTROL tokens become special, USER_DEFINED plain added ones; both stay whole in text."""
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    # A control token spelled outside the byte alphabet is a llama.cpp mislabel: transformers
    # skips it.
    typed = list(zip(tokens, types, strict=False))
    control = [t for t, k in typed if k == _GGUF_CONTROL and set(t) <= alphabet]
    user = [t for t, k in typed if k == _GGUF_USER_DEFINED]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])


def _token_at(tokens: list[str], index: int | None) -> str | None:
    return tokens[index] if index is not None and 0 <= index < len(tokens) else None
