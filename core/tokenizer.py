"""Byte-level BPE tokenizer (via the `tokenizers` library) and chat-template rendering.

One `Tokenizer` wraps a `tokenizers.Tokenizer` plus the three facts the rest of core needs
beside it: the BOS/EOS tokens and the chat template. It is built by training on text, from a
`tokenizer.json` directory (ours or a Hugging Face checkpoint), from GPT-2 `vocab.json` +
`merges.txt`, or from a GGUF file's metadata. Encoding mirrors `transformers` for the same
source: no BOS is added unless the source's config asks for it.

Only byte-level BPE is supported from GGUF (`tokenizer.ggml.model == "gpt2"`). Text is never
unknown, with one inherited quirk: a vocabulary trained without some bytes (SmolLM2 lacks 21,
e.g. 0x04, and lead bytes 0xF1/0xF2 of U+40000..U+BFFFF) drops them when encoding, as
transformers does; decoding what is left can then give U+FFFD.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers

from core import gguf_vocab

if TYPE_CHECKING:
    import gguf

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"  # older Hugging Face dirs keep bos/eos here
TEMPLATE_FILE = "chat_template.jinja"  # newer Hugging Face dirs keep the template here

# Used when the source carries no template. Plain ChatML, the format SmolLM2 and Qwen use;
# a tokenizer without `<|im_start|>`/`<|im_end|>` special tokens will see them as ordinary text.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# End-of-turn markers that also stop generation when the vocabulary has them as special tokens.
CHAT_END_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class TokenizerError(ValueError):
    """A tokenizer could not be built, loaded, saved or used; the message says what to do."""


class Tokenizer:
    """Byte-level BPE with BOS/EOS tokens and a chat template."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and backend.token_to_id(token) is None:
                raise TokenizerError(f"{name} {token!r} is not in the vocabulary; fix the config.")
        self.backend = backend
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template
        self._template: Any = None  # compiled lazily: most callers never render a chat
        self._literal: tokenizers.Tokenizer | None = None  # special-token text stays text

    # ----------------------------------------------------------------- constructors
    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        *,
        special_tokens: Sequence[str] = ("<|endoftext|>",),
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Learn a byte-level BPE vocabulary from `texts`; EOS is the first special token."""
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(special_tokens):
            raise TokenizerError(
                f"vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                f"{len(alphabet) + len(special_tokens)} (256 bytes + the special tokens)."
            )
        backend = _byte_level(models.BPE())
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=alphabet,  # every byte gets an id, so no text is ever unknown
            show_progress=False,
        )
        backend.train_from_iterator(texts, trainer=trainer)
        eos = special_tokens[0] if special_tokens else None
        return cls(backend, bos_token=None, eos_token=eos)

    @classmethod
    def from_gpt2_files(cls, vocab_path: str | Path, merges_path: str | Path) -> Tokenizer:
        """GPT-2 style `vocab.json` + `merges.txt`; `<|endoftext|>` is special when present."""
        vocab = _read_json(Path(vocab_path), "vocab.json")
        if not isinstance(vocab, dict) or not all(isinstance(i, int) for i in vocab.values()):
            raise TokenizerError(f"{vocab_path} must map token strings to integer ids.")
        merges = _read_merges(Path(merges_path))
        backend = _byte_level(models.BPE(vocab, merges))
        eos = "<|endoftext|>" if "<|endoftext|>" in vocab else None
        if eos:  # GPT2Tokenizer's default bos/eos/unk, kept whole in text as transformers does
            backend.add_special_tokens([AddedToken(eos, special=True, normalized=False)])
        return cls(backend, bos_token=eos, eos_token=eos)

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        """The tokenizer described by an open `gguf.GGUFReader`'s `tokenizer.*` metadata."""

        def meta(key: str) -> Any:
            field = reader.fields.get(f"tokenizer.{key}")
            return None if field is None else field.contents()

        if meta("ggml.model") != "gpt2":
            raise TokenizerError(
                f"this GGUF's tokenizer is {meta('ggml.model')!r}; only byte-level BPE "
                "(tokenizer.ggml.model = 'gpt2', as in SmolLM2, Llama 3, Qwen2) is supported. "
                "Load the model's Hugging Face checkpoint directory instead."
            )
        tokens, merges = meta("ggml.tokens"), meta("ggml.merges")
        if not tokens or not merges:
            raise TokenizerError("this GGUF has no tokenizer.ggml.tokens/merges; re-export it.")
        try:
            backend, bos, eos = gguf_vocab.backend(meta, tokens, merges)
        except ValueError as err:  # an unknown pre-tokenizer
            raise TokenizerError(str(err)) from None
        _set_bos_eos(backend, bos, eos, meta("ggml.add_bos_token"), meta("ggml.add_eos_token"))
        return cls(backend, bos_token=bos, eos_token=eos, chat_template=meta("chat_template"))

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """A dir with `tokenizer.json` and optionally `tokenizer_config.json` (ours or HF's)."""
        directory = Path(path)
        backend = _load_tokenizer_json(directory / TOKENIZER_FILE)
        config = _read_optional_json(directory / CONFIG_FILE)
        special = _read_optional_json(directory / SPECIAL_TOKENS_FILE)
        bos = _token_text(config.get("bos_token", special.get("bos_token")))
        eos = _token_text(config.get("eos_token", special.get("eos_token")))
        # transformers rebuilds the post-processor only when the config states add_bos/add_eos.
        if "add_bos_token" in config or "add_eos_token" in config:
            _set_bos_eos(
                backend, bos, eos, config.get("add_bos_token"), config.get("add_eos_token")
            )
        template = _pick_template(config.get("chat_template"))
        if template is None and (directory / TEMPLATE_FILE).is_file():
            template = (directory / TEMPLATE_FILE).read_text(encoding="utf-8")
        return cls(backend, bos_token=bos, eos_token=eos, chat_template=template)

    # ----------------------------------------------------------------- persistence
    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json` and `tokenizer_config.json`, each atomically."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        names = ("bos_token", "eos_token", "chat_template")
        config = {name: getattr(self, name) for name in names}
        _write_atomic(target / TOKENIZER_FILE, self.backend.to_str(pretty=False))
        _write_atomic(target / CONFIG_FILE, json.dumps(config, ensure_ascii=False, indent=2))

    # ----------------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> list[int]:
        """Token ids for `text`; special tokens written in the text stay whole (as transformers)."""
        if not isinstance(text, str):
            raise TokenizerError(f"can only encode str, got {type(text).__name__}.")
        return self.backend.encode(text, add_special_tokens=True).ids

    def encode_literal(self, text: str) -> list[int]:
        """Token ids for `text` as plain text: `<|im_end|>` written in it is characters, never
        the control token (for text a user or a document supplies)."""
        if self._literal is None:  # a copy: the flag on the shared backend would race
            literal = tokenizers.Tokenizer.from_str(self.backend.to_str())
            literal.encode_special_tokens = True
            self._literal = literal
        return self._literal.encode(text, add_special_tokens=False).ids

    def encode_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> tuple[list[int], list[int]]:
        """(ids, ends) of a chat rendered by the template: only the template's own markers are
        control tokens, every message's content is encoded as plain text; `ends[i]` is where
        message i's tokens (with its template markers before it) end."""
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]  # private use: never in text
        masked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
        text = self.apply_chat_template(masked, add_generation_prompt)
        ids: list[int] = []
        ends: list[int] = []
        at = 0
        for message, mark in zip(messages, marks, strict=True):
            found = text.find(mark, at)
            if found < 0:
                raise TokenizerError(
                    "the chat template does not show each message's text as is; "
                    "use a template that does (ChatML, Llama, Qwen and SmolLM2's all do)."
                )
            ids += self.encode(text[at:found]) + self.encode_literal(str(message["content"]))
            ends.append(len(ids))
            at = found + len(mark)
        return ids + self.encode(text[at:]), ends

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text for `ids`; an id outside the vocabulary is an error, not silently dropped."""
        ids = [int(i) for i in ids]
        size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is outside the vocabulary (size {size}).")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.backend.token_to_id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return None if self.eos_token is None else self.backend.token_to_id(self.eos_token)

    @property
    def stop_token_ids(self) -> set[int]:
        """EOS plus chat end markers that are special tokens in this vocabulary."""
        special = {t.content for t in self.backend.get_added_tokens_decoder().values() if t.special}
        stops = {self.backend.token_to_id(m) for m in CHAT_END_MARKERS if m in special}
        if self.eos_token_id is not None:
            stops.add(self.eos_token_id)
        return stops

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    # ----------------------------------------------------------------- chat
    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """Render `messages` with the model's template (plain ChatML when it has none)."""
        for message in messages:
            if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
                raise TokenizerError(f"a message needs 'role' and 'content' keys: {message!r}.")
        try:
            if self._template is None:
                self._template = _jinja_env().from_string(self.chat_template or CHATML_TEMPLATE)
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:
            raise TokenizerError(f"the chat template failed: {exc.message or exc}") from exc


# --------------------------------------------------------------------- helpers
def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
    """GPT-2's pipeline: split with its regex, spell bytes as printable characters."""
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    return backend


def _set_bos_eos(backend: tokenizers.Tokenizer, bos: Any, eos: Any, add_bos: Any, add_eos: Any):
    """Wrap encodings in BOS/EOS as the flags say, like transformers' `update_post_processor`."""
    bos, eos = (bos if add_bos else None), (eos if add_eos else None)
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    special = [(t, backend.token_to_id(t)) for t in (bos, eos) if t]
    backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=special)


def _token_text(value: Any) -> str | None:
    """HF configs write a special token as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def _pick_template(value: Any) -> str | None:
    """HF configs hold one template or a list of named ones; the chat one is named 'default'."""
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        return named.get("default")
    return value


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise TokenizerError(f"{what} not found at {path}; check the path.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"{path} is not valid JSON ({exc}); restore or re-create it.") from exc


def _load_tokenizer_json(file: Path) -> tokenizers.Tokenizer:
    if not file.is_file():
        raise TokenizerError(f"no {file.name} in {file.parent}; give a model or tokenizer dir.")
    _read_json(file, file.name)  # a JSON syntax error reads better from `json` than from Rust
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as exc:
        raise TokenizerError(f"{file} is not a tokenizer.json we can read ({exc}).") from exc


def _read_optional_json(path: Path) -> dict[str, Any]:
    data = _read_json(path, path.name) if path.is_file() else {}
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object; restore or re-create the file.")
    return data


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise TokenizerError(f"merges.txt not found at {path}; check the path.") from exc
    merges = []
    for number, line in enumerate(lines, start=1):
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"{path}:{number} should be two tokens and one space: {line!r}.")
        merges.append((parts[0], parts[1]))
    return merges


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target then rename, so a crash never leaves a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _jinja_env() -> ImmutableSandboxedEnvironment:
    """The environment transformers renders chat templates in (sandboxed, trimmed blocks)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env
