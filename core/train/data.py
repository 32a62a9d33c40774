"""Training data: text corpora -> packed token blocks; JSONL examples -> token ids with loss masks.

Pre-training reads text files, folders or globs as UTF-8, joins documents with the EOS token and
cuts the stream into blocks of `block_size + 1` tokens (inputs and next-token targets). The last
`val_fraction` of the *token stream* is validation, so no block straddles the split.

Fine-tuning reads JSONL in three shapes, each rendered with the model's chat template:
  {"prompt", "completion"}                -> user: prompt, assistant: completion       (task)
  {"instruction", "input"?, "output"}     -> user: prompts.instruction(...), assistant: output
  {"messages": [{"role", "content"}...]}  -> as is                                      (chat)
The loss covers assistant replies and the end-of-turn token that closes each; everything else is
masked with -100. Truncation keeps the first `block_size + 1` tokens; an example whose every
response token falls past that is an error, not a silent no-op.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.generate import prompts
from core.tokenizer import CHATML_TEMPLATE, Tokenizer

IGNORE = -100  # label that cross_entropy skips
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # EOS first; ChatML markers
TEXT_SUFFIXES = (".txt", ".md", ".text", ".rst")  # files picked up when a folder is given
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """Training data that cannot be used; the message names the file (and line) to fix."""


# --------------------------------------------------------------------------- pre-training
def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files, folders (text files inside, recursively) and globs -> a sorted list of files."""
    files: list[Path] = []
    for spec in paths:
        path = Path(spec).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            if not found:
                raise DataError(f"{path}: no text files ({', '.join(TEXT_SUFFIXES)}) in folder.")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(spec), recursive=True))
            if not matches:
                raise DataError(f"{spec}: no such file, folder or matching glob.")
            files += [m for m in matches if m.is_file()]
    return files


def read_texts(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, text) for every file; refuses non-UTF-8 files and a corpus with no text at all."""
    texts = []
    for path in expand_paths(paths):
        try:
            texts.append((path, path.read_text(encoding="utf-8")))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start}).") from err
    if not any(text.strip() for _, text in texts):
        names = ", ".join(str(p) for p, _ in texts) or ", ".join(map(str, paths))
        raise DataError(f"{names}: the corpus is empty; give files with some text in them.")
    return texts


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE on `texts` with EOS and the ChatML markers as single special tokens."""
    tokenizer = Tokenizer.train(texts, vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.chat_template = CHATML_TEMPLATE  # saved with the model, so chat renders the same
    return tokenizer


def token_stream(texts: Sequence[tuple[Path, str]], tokenizer: Tokenizer) -> torch.Tensor:
    """All documents' ids, each followed by EOS, as one 1-D tensor."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DataError("the tokenizer has no EOS token to separate documents; train a new one.")
    ids: list[int] = []
    for _, text in texts:
        if text.strip():
            ids += [*tokenizer.encode(text), eos]
    return torch.tensor(ids, dtype=torch.long)


class BlockDataset(torch.utils.data.Dataset):
    """Non-overlapping blocks of `block_size + 1` tokens -> (input ids, target ids)."""

    def __init__(self, stream: torch.Tensor, block_size: int) -> None:
        self.stream, self.block_size = stream, block_size

    def __len__(self) -> int:
        return max(0, (len(self.stream) - 1) // self.block_size)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        chunk = self.stream[i * self.block_size : (i + 1) * self.block_size + 1]
        return chunk[:-1], chunk[1:]


def pretrain_datasets(
    texts: Sequence[tuple[Path, str]], tokenizer: Tokenizer, block_size: int, val_fraction: float
) -> tuple[BlockDataset, BlockDataset | None]:
    """Train and validation blocks; validation is the tail of the token stream."""
    if not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    stream = token_stream(texts, tokenizer)
    n_val = int(len(stream) * val_fraction)
    names = ", ".join(str(p) for p, _ in texts)
    train, val = stream[: len(stream) - n_val], stream[len(stream) - n_val :]
    need = block_size + 1
    if len(train) < need:
        raise DataError(
            f"{names}: the corpus gives {len(train)} training tokens, fewer than one block of "
            f"{need}; add text or lower --block-size."
        )
    if val_fraction and len(val) < need:
        raise DataError(
            f"{names}: the validation split ({val_fraction:.0%}) gives {len(val)} tokens, fewer "
            f"than one block of {need}; add text, raise --val-fraction or lower --block-size."
        )
    return BlockDataset(train, block_size), BlockDataset(val, block_size) if val_fraction else None


# --------------------------------------------------------------------------- fine-tuning
def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line; a bad line is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as err:
        raise DataError(f"{path}: no such file.") from err
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (bad byte at offset {err.start}).") from err
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{number}: invalid JSON ({err.msg}, column {err.colno})."
            ) from err
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: each line must be a JSON object, got {line[:40]!r}.")
        records.append((number, record))
    if not records:
        raise DataError(f"{path}: no examples; the file is empty.")
    return records


def _text_field(record: dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    if key not in record:
        if optional:
            return ""
        raise DataError(f"{where}: missing field {key!r}.")
    value = record[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}.")
    return value


def to_messages(record: dict[str, Any], where: str) -> list[dict[str, str]]:
    """One JSONL record in any of the three shapes -> chat messages."""
    if "messages" in record:
        return _check_messages(record["messages"], where)
    if "prompt" in record or "completion" in record:
        user, reply = _text_field(record, "prompt", where), _text_field(record, "completion", where)
    elif "instruction" in record or "output" in record:
        text = _text_field(record, "instruction", where)
        extra = _text_field(record, "input", where, optional=True)
        try:
            user = prompts.instruction(text, extra)
        except prompts.PromptError as err:
            raise DataError(f"{where}: {err}") from err
        reply = _text_field(record, "output", where)
    else:
        raise DataError(
            f"{where}: unrecognised example with keys {sorted(record)}; "
            "expected prompt/completion, "
            "instruction/input/output or messages."
        )
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]


def _check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list.")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not {"role", "content"} <= m.keys():
            raise DataError(f"{where}: message {i} needs 'role' and 'content' keys.")
        if m["role"] not in ROLES or not isinstance(m["content"], str):
            raise DataError(
                f"{where}: message {i} needs a role in {ROLES} and a string content, got {m!r:.80}."
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so nothing to learn from.")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _extend(tokenizer: Tokenizer, ids: list[int], done: str, text: str) -> list[int]:
    """Ids for `text[len(done):]` given `ids` for `done`: the whole-text encoding when it starts
    with `ids` (BPE did not merge across the boundary), else the new piece encoded on its own,
    which is what generation does when it continues a prompt."""
    whole = tokenizer.encode(text)
    if whole[: len(ids)] == ids:
        return whole[len(ids) :]
    return tokenizer.backend.encode(text[len(done) :], add_special_tokens=False).ids


def encode_chat(
    tokenizer: Tokenizer, messages: list[dict[str, str]], where: str
) -> tuple[list[int], list[int]]:
    """(ids, labels): labels copy the ids of each assistant reply and its end-of-turn token."""
    stops = tokenizer.stop_token_ids
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        context = prompts.render(tokenizer, messages[:i], add_generation_prompt=True)
        full = prompts.render(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not context.startswith(done) or not full.startswith(context):
            raise DataError(
                f"{where}: the chat template does not render turns as a growing prefix, so the "
                "reply tokens cannot be located; use a template that appends each turn."
            )
        prompt_ids = _extend(tokenizer, ids, done, context)
        ids += prompt_ids
        labels += [IGNORE] * len(prompt_ids)
        reply = _extend(tokenizer, ids, context, full)
        end = next((j + 1 for j, t in enumerate(reply) if t in stops), len(reply))
        ids += reply
        labels += reply[:end] + [IGNORE] * (len(reply) - end)  # text after the end marker: masked
        done = full
    return ids, labels


@dataclass
class Example:
    """One fine-tuning sequence: inputs and shifted labels (-100 where no loss)."""

    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,) label[t] is the target for input_ids[t]'s next token


def encode_example(
    tokenizer: Tokenizer, record: dict[str, Any], block_size: int, where: str
) -> Example:
    ids, labels = encode_chat(tokenizer, to_messages(record, where), where)
    first = next(j for j, t in enumerate(labels) if t != IGNORE)
    ids, labels = ids[: block_size + 1], labels[: block_size + 1]  # keep the start
    targets = labels[1:]
    if all(t == IGNORE for t in targets):
        raise DataError(
            f"{where}: the response is truncated away: the prompt takes {first} tokens and the "
            f"block size is {block_size}; shorten the prompt or raise --block-size."
        )
    return Example(torch.tensor(ids[:-1]), torch.tensor(targets))


def finetune_examples(path: str | Path, tokenizer: Tokenizer, block_size: int) -> list[Example]:
    """Every record of a JSONL file, encoded; errors name the file and line."""
    return [
        encode_example(tokenizer, record, block_size, f"{path}:{number}")
        for number, record in read_jsonl(path)
    ]


def collate(batch: Sequence[Any], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks or `Example`s -> (inputs (B, T), labels (B, T)), right-padded to the longest."""
    pairs = [(b.input_ids, b.labels) if isinstance(b, Example) else b for b in batch]
    T = max(len(x) for x, _ in pairs)
    inputs = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), T), IGNORE, dtype=torch.long)
    for row, (x, y) in enumerate(pairs):
        inputs[row, : len(x)], labels[row, : len(y)] = x, y
    return inputs, labels
