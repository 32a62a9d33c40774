"""What a training job may be given, checked before any job starts: the model presets, the
server's caps (`JobLimits`, from the environment), text and upload checks (empty, too large,
binary), JSONL checks with the bad line's number, and the size of a model before it is built."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from core.config import ModelConfig
from core.train.data import DataError, read_jsonl, to_messages
from core.train.setup import model_config

# Model presets for pre-training from the browser; the trainer's other settings stay its own.
SHAPE = ("arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size")
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        **dict(zip(SHAPE, ("classic", 2, 4, 128, 128, 2048), strict=True)),
        **dict(batch_size=8, lr=1e-3, warmup_steps=20, max_steps=600),
    },
    "small": {
        **dict(zip(SHAPE, ("classic", 4, 8, 256, 256, 4096), strict=True)),
        **dict(batch_size=8, lr=6e-4, warmup_steps=50, max_steps=2000),
    },
}


class JobError(ValueError):
    """A job the server will not start, stop or resume; the message says what to do instead."""


@dataclass(frozen=True)
class JobLimits:
    """The server's caps on training jobs."""

    max_minutes: float = 30.0
    max_text_bytes: int = 20 * 1024 * 1024
    max_rows: int = 20_000
    max_params: int = 200_000_000
    threads: int = 1
    nice: int = 19  # the lowest priority: a job trains on what chats leave idle

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> JobLimits:
        env = dict(os.environ if env is None else env)

        def read(name: str, default: float) -> float:
            return float(env.get(name) or default)

        return cls(
            max_minutes=read("SCRATCHGPT_TRAIN_MINUTES", cls.max_minutes),
            max_text_bytes=int(read("SCRATCHGPT_TRAIN_MAX_MB", 20) * 1024 * 1024),
            max_rows=int(read("SCRATCHGPT_TRAIN_MAX_ROWS", cls.max_rows)),
            max_params=int(read("SCRATCHGPT_TRAIN_MAX_PARAMS", cls.max_params)),
            threads=int(read("SCRATCHGPT_TRAIN_THREADS", cls.threads)),
        )


# --------------------------------------------------------------------------- checking inputs
def megabytes(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def check_size(size: int, limits: JobLimits, what: str = "The text") -> None:
    if size > limits.max_text_bytes:
        raise JobError(
            f"{what} is {megabytes(size)}; this server trains on at most "
            f"{megabytes(limits.max_text_bytes)} (SCRATCHGPT_TRAIN_MAX_MB). Use a smaller part."
        )


def check_text(text: str, limits: JobLimits, what: str = "The text") -> str:
    """Text fit to train on: not empty, within the size cap, not binary data."""
    check_size(len(text), limits, what)  # characters <= bytes: refused before encoding
    check_size(len(text.encode("utf-8", "surrogatepass")), limits, what)
    if not text.strip():
        raise JobError(f"{what} is empty; paste or upload some text, or pick a shipped corpus.")
    controls = sum(1 for c in text[:65536] if ord(c) < 32 and c not in "\t\n\r\f")
    if "\x00" in text or controls > len(text[:65536]) // 100:
        raise JobError(f"{what} looks like binary data, not text; give UTF-8 text.")
    return text


def decode_upload(name: str, raw: bytes, limits: JobLimits) -> str:
    """An uploaded file's text; binary and non-UTF-8 files are refused with the reason."""
    check_size(len(raw), limits, name)
    if b"\x00" in raw[:65536]:
        raise JobError(f"{name} looks like binary data (it has NUL bytes); upload UTF-8 text.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise JobError(f"{name} is not UTF-8 text (bad byte at offset {err.start}).") from err
    return check_text(text, limits, name)


def check_jsonl(text: str, limits: JobLimits, name: str, folder: Path) -> list[dict[str, Any]]:
    """Fine-tuning records of a JSONL text in any of the trainer's three shapes; a bad line is
    refused with its number (the trainer's own checks, so what passes here trains)."""
    check_text(text, limits, name)
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder / "check.jsonl"
    scratch.write_text(text, encoding="utf-8")
    try:
        records = read_jsonl(scratch)
        for number, record in records:
            to_messages(record, f"{scratch}:{number}")
    except DataError as err:
        raise JobError(str(err).replace(str(scratch), name)) from err
    finally:
        scratch.unlink(missing_ok=True)
    if len(records) > limits.max_rows:
        raise JobError(
            f"{name} has {len(records)} rows; this server fine-tunes on at most "
            f"{limits.max_rows} (SCRATCHGPT_TRAIN_MAX_ROWS)."
        )
    return [record for _, record in records]


def parameters(config: ModelConfig) -> int:
    """The parameter count of a model of this shape, without allocating its weights."""
    import torch

    from core.model import Decoder, NoInit

    with torch.device("meta"), NoInit():  # no init on meta: it would import torch._dynamo (~1 s)
        return Decoder(config).num_parameters()


def pretrain_config(settings: dict[str, Any]) -> ModelConfig:
    """The model a pre-training run with these settings builds (the trainer's own rule)."""
    cfg = SimpleNamespace(**{k: settings.get(k) for k in ("n_layer", "n_head", "n_embd")})
    cfg.arch, cfg.block_size = settings.get("arch", "classic"), settings.get("block_size")
    vocab = settings.get("vocab_size") or ModelConfig.preset(cfg.arch).vocab_size
    tokenizer = SimpleNamespace(vocab_size=vocab, bos_token_id=None, eos_token_id=0)
    return model_config(cfg, tokenizer)  # type: ignore[arg-type]


def check_model_size(n_params: int, limits: JobLimits, what: str = "This model") -> None:
    if n_params > limits.max_params:
        raise JobError(
            f"{what} has {n_params / 1e6:.1f}M parameters; this server trains at most "
            f"{limits.max_params / 1e6:.1f}M (SCRATCHGPT_TRAIN_MAX_PARAMS). Pick a smaller "
            "preset or fewer layers / a narrower width."
        )


# --------------------------------------------------------------------------- jobs on disk
