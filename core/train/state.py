"""The resumable state of a run beside its checkpoint, stored without pickle.

A training checkpoint directory is a normal model checkpoint (`core.checkpoint`) plus:
  training_state/tensors.safetensors  optimizer moments and steps, torch (and CUDA) RNG states
  training_state/trainer.json         settings, step, data position, schedule, python/numpy RNG
  log.jsonl, metrics.json, loss.png   the run's history so far
Everything is assembled in a staging directory and swapped in with one rename, so a crash leaves
the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core import checkpoint
from core.train.config import TrainConfig, TrainError, lr_at

STATE_DIR, TENSORS_FILE, TRAINER_FILE = "training_state", "tensors.safetensors", "trainer.json"
LOG_FILE, METRICS_FILE, PLOT_FILE = "log.jsonl", "metrics.json", "loss.png"


class Best:
    """The lowest validation loss so far, its step and (with keep_best) its trainable weights."""

    def __init__(self) -> None:
        self.loss, self.step, self.weights = math.inf, None, {}

    def offer(self, loop: Any, val_loss: float | None) -> None:
        if val_loss is None or not val_loss < self.loss:
            return
        self.loss, self.step = val_loss, loop.progress.step
        if loop.cfg.keep_best:  # frozen weights never change: only the trained ones are copied
            raw = loop.acc.unwrap_model(loop.model)
            self.weights = {
                n: p.detach().clone() for n, p in raw.named_parameters() if p.requires_grad
            }

    @torch.no_grad()
    def restore(self, loop: Any) -> None:
        for name, p in loop.acc.unwrap_model(loop.model).named_parameters():
            if name in self.weights:
                p.copy_(self.weights[name])


@dataclass
class Progress:
    """Where a run is: optimizer steps, global micro-batches consumed, tokens seen, history."""

    step: int = 0
    micro_batches: int = 0  # the data position: global micro-batches consumed so far
    tokens: int = 0
    elapsed_s: float = 0.0
    global_batch: int = 0  # sequences per micro-step over all processes
    train_items: int = 0  # blocks or examples in the training set: resume needs the same data
    log: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- RNG and optimizer
def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able python/numpy states, torch/CUDA state tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    return plain, tensors


def set_rng_state(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def optimizer_to_safetensors(
    state: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split `optimizer.state_dict()` into JSON (groups, scalars) and tensors (moments, steps)."""
    tensors, scalars = {}, {}
    for index, slots in state["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def optimizer_from_safetensors(plain: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in plain["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


# --------------------------------------------------------------------------- save / load
def save(
    out: str | Path,
    model: torch.nn.Module,
    tokenizer: Any,
    optimizer_state: dict[str, Any],
    cfg: TrainConfig,
    progress: Progress,
    metrics: dict[str, Any],
) -> Path:
    """Write the checkpoint, training state and history; swap them into `out` in one rename."""
    from safetensors.torch import save_file

    out = Path(out)
    staging = out.with_name(f".{out.name}.staging")
    checkpoint.save(model, staging, tokenizer)
    (staging / STATE_DIR).mkdir()
    opt_plain, tensors = optimizer_to_safetensors(optimizer_state)
    rng_plain, rng_tensors = rng_state()
    save_file({**tensors, **rng_tensors}, str(staging / STATE_DIR / TENSORS_FILE))
    trainer = {
        "format": 1,
        "config": dataclasses.asdict(cfg),
        "step": progress.step,
        "micro_batches": progress.micro_batches,
        "tokens": progress.tokens,
        "elapsed_s": progress.elapsed_s,
        "global_batch": progress.global_batch,
        "train_items": progress.train_items,
        "lr": lr_at(progress.step, cfg),
        "optimizer": opt_plain,
        "rng": rng_plain,
    }
    (staging / STATE_DIR / TRAINER_FILE).write_text(json.dumps(trainer), encoding="utf-8")
    lines = "".join(json.dumps(r) + "\n" for r in progress.log)
    (staging / LOG_FILE).write_text(lines, encoding="utf-8")
    (staging / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_losses(progress.log, staging / PLOT_FILE)
    _swap_in(staging, out)
    return out


def _swap_in(staging: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(staging, out)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class Resumed:
    """Everything read back from a training checkpoint."""

    path: Path
    config: Any  # ModelConfig
    state: dict[str, torch.Tensor]
    tokenizer: Any
    trainer: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def progress(self) -> Progress:
        t = self.trainer
        log = [r for r in self.log() if r.get("step", 0) <= t["step"]]
        return Progress(
            t["step"],
            t["micro_batches"],
            t["tokens"],
            t["elapsed_s"],
            t["global_batch"],
            t["train_items"],
            log,
        )

    def log(self) -> list[dict[str, Any]]:
        path = self.path / LOG_FILE
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_trainer(path: str | Path) -> dict[str, Any]:
    """`training_state/trainer.json` of a checkpoint dir; a clear error when it is not resumable."""
    file = Path(path) / STATE_DIR / TRAINER_FILE
    if not file.is_file():
        raise TrainError(f"{file}: not found; {path} is not a resumable training checkpoint.")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TrainError(f"{file}: damaged ({err}); resume from another checkpoint.") from err


def load(path: str | Path) -> Resumed:
    from safetensors.torch import load_file

    path = Path(path)
    trainer = read_trainer(path)
    if trainer["config"].get("mode") == "mlm":  # an encoder's config.json has its own fields
        from core.mlm import load_state

        config, state, tokenizer = load_state(path)
    else:
        config, state, tokenizer = checkpoint.load_state(path)
    tensors = load_file(str(path / STATE_DIR / TENSORS_FILE))
    return Resumed(path, config, state, tokenizer, trainer, tensors)


def check_same_architecture(expected: Any, resumed: Resumed) -> None:
    """Refuse to resume weights of another shape or flavour than the run describes."""
    ours, theirs = expected.to_dict(), resumed.config.to_dict()
    diff = [k for k in ours if k != "name" and ours[k] != theirs.get(k)]
    if diff:
        shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs run {ours[k]!r}" for k in diff[:4])
        raise TrainError(
            f"{resumed.path / checkpoint.CONFIG_FILE}: the checkpoint is another architecture "
            f"({shown}); resume with the settings it was trained with, or start a new run."
        )


def plot_losses(log: list[dict[str, Any]], path: Path) -> None:
    """Train and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in log if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in log if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for points, label, style in ((train, "train", "-"), (val, "validation", "o-")):
        if points:
            ax.plot(*zip(*points, strict=True), style, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
