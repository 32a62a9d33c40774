"""`TrainConfig`: every setting of a run, checked on creation; the learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("fp32", "bf16", "fp16")
ARCHES = ("classic", "gpt2", "llama")
ENCODER_ARCHES = ("bert", "bert_preln", "bert_rope")  # mode mlm: post-LN as BERT, pre-LN, RoPE
LOSS_WEIGHTINGS = ("token", "example")


class TrainError(ValueError):
    """Settings or a resume checkpoint that cannot be used; the message says what to fix."""


@dataclass
class TrainConfig:
    """Every setting of a run; JSON in, JSON out (saved in trainer.json for `--resume`)."""

    mode: str = "pretrain"  # pretrain | finetune | mlm (an encoder, `core.mlm`)
    data: list[str] = field(default_factory=list)  # text files/folders/globs, or JSONL files
    out: str = "models/run"
    val: str | None = None  # finetune: a validation JSONL (else the last val_fraction of data)
    init: str | None = None  # finetune: anything `core.load.read_source` accepts
    arch: str = "classic"
    tokenizer: str | None = None  # pretrain: a tokenizer dir; else one is trained on the corpus
    vocab_size: int | None = None  # pretrain: None -> the preset's
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None  # finetune: longest sequence (default: the model's context)
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr: float | None = None  # None -> lr / 10
    warmup_steps: int = 100
    max_steps: int = 1000
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0 disables
    eval_every: int = 100
    eval_steps: int = 20  # validation batches per evaluation
    save_every: int = 500
    val_fraction: float = 0.1
    precision: str = "fp32"
    seed: int = 1337
    resume: str | None = None
    max_minutes: float | None = None
    freeze_all_but: int | None = None  # train only the last N blocks + final norm + LM head
    # the final checkpoint holds the weights of the lowest validation loss seen (evaluated every
    # eval_every steps), not the last step's; periodic checkpoints keep the current weights
    keep_best: bool = False
    # finetune: "token" averages the loss over every scored token of a batch, so a 40-token reply
    # outweighs a 2-token answer twenty times; "example" averages each example's tokens first,
    # so every example counts the same (a mix of short-answer and long-reply tasks)
    loss_weighting: str = "token"
    # residual dropout while training (`Decoder.dropout`); 0 for pre-training a small model on a
    # large corpus, 0.1-0.2 against over-fitting a few thousand fine-tuning examples
    dropout: float = 0.0
    # mlm: the share of tokens chosen for prediction, and whether a word's pieces go together
    mlm_probability: float = 0.15
    whole_word: bool = False
    # hooks for a supervisor (the web app's job runner): a file whose appearance stops the run
    # with a checkpoint, and a JSONL file each step's and evaluation's record is appended to live
    stop_file: str | None = None
    events: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("pretrain", "finetune", "mlm"):
            raise TrainError(f"mode must be pretrain, finetune or mlm, got {self.mode!r}.")
        if self.precision not in PRECISIONS:
            raise TrainError(f"precision must be one of {PRECISIONS}, got {self.precision!r}.")
        arches = ENCODER_ARCHES if self.mode == "mlm" else ARCHES
        if self.arch not in arches:
            raise TrainError(f"{self.mode} needs an arch in {arches}, got {self.arch!r}.")
        if not 0.0 < self.mlm_probability < 1.0:
            raise TrainError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise TrainError(
                f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise TrainError(f"dropout must be in [0, 1), got {self.dropout}.")
        if isinstance(self.data, str):
            self.data = [self.data]
        counts = ("batch_size", "grad_accum", "max_steps", "eval_every", "eval_steps", "save_every")
        for name in counts:
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.mode == "finetune" and not self.init:
            raise TrainError("finetune needs --init: a checkpoint dir, a .gguf, or 'default'.")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}.")
        return cls(**data)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr` over `warmup_steps`, then cosine decay to `min_lr` at `max_steps`."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)
