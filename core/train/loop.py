"""One training loop for pre-training and fine-tuning, on `accelerate` (CLI: `__main__.py`).

Batches are sharded here, not by `accelerator.prepare`: global micro-batch g is positions
[g*G, (g+1)*G) of an endless stream of seeded per-epoch shuffles (G = batch_size x processes) and
process r takes its r-th slice. So the data position is one integer, resume is exact, and N
processes see the same global batch as one process with N times the batch size.

The output directory is a checkpoint `core.generate.engine.LLM.load` reads (model.safetensors,
config.json, tokenizer.json) plus training_state/ for `--resume`, log.jsonl, loss.png and
metrics.json; it is rewritten every `--save-every` steps and at the end, each time atomically.
`--freeze-all-but N` trains the last N blocks, the final norm and the LM head (with tied
embeddings that is the token embedding matrix); everything else keeps its weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from core.train import data, setup, state
from core.train.config import TrainConfig, TrainError, lr_at
from core.train.state import Progress

MIXED = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


@dataclass
class TrainResult:
    """What a run did: its checkpoint, this run's per-step losses and the final evaluation."""

    out: Path
    step: int
    losses: list[float]
    val_loss: float | None
    val_ppl: float | None
    tokens_per_s: float
    stopped: str  # "max_steps", "time budget", "stop_at" or "stop file"


class Batches:
    """Indices of each process's share of global micro-batch g (see the module docstring)."""

    def __init__(self, n: int, per_rank: int, world: int, rank: int, seed: int, shuffle=True):
        self.n, self.per_rank, self.world, self.rank = n, per_rank, world, rank
        self.seed, self.shuffle = seed, shuffle
        self._perms: dict[int, list[int]] = {}

    def _at(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if not self.shuffle:
            return i
        if epoch not in self._perms:
            self._perms = {
                epoch: torch.randperm(self.n, generator=_gen(self.seed + epoch)).tolist()
            }
        return self._perms[epoch][i]

    def indices(self, g: int) -> list[int]:
        start = g * self.per_rank * self.world + self.rank * self.per_rank
        return [self._at(p) for p in range(start, start + self.per_rank)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_accelerator(precision: str):
    """An `Accelerator` for this run; a second run in one process may choose another precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainError("fp16 mixed precision needs a CUDA GPU; use --precision bf16 on CPU.")
    AcceleratorState._reset_state()  # keeps the process group; drops the old precision
    GradientState._reset_state()
    # cpu=True without CUDA: processes started by torchrun then join a gloo group (MULTI_CPU).
    return Accelerator(mixed_precision=MIXED[precision], cpu=not torch.cuda.is_available())


def batch_loss(
    model, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean", weighting: str = "token"
) -> torch.Tensor:
    """Cross-entropy over the labelled positions; where the loss mask drops some (fine-tuning),
    logits are computed at the labelled positions only. With `weighting="example"` the mean is
    over examples of each example's mean token loss (rows without a labelled token are left out);
    a "sum" (validation) is always over tokens."""
    scored = y != data.IGNORE
    if bool(scored.all()):
        logits = model(x).flatten(0, 1)  # (B*T, vocab)
        flat = y.flatten()
    else:
        logits, flat = model(x, select=scored), y[scored]  # (N, vocab), row-major like y[scored]
    if weighting == "token" or reduction != "mean":
        return F.cross_entropy(logits.float(), flat, reduction=reduction)
    losses = F.cross_entropy(logits.float(), flat, reduction="none")  # (N,)
    per_row = scored.sum(1)  # (B,)
    weights = (1.0 / per_row.clamp(min=1)).repeat_interleave(per_row)  # (N,)
    return (losses * weights).sum() / (per_row > 0).sum().clamp(min=1)


class Loop:
    """The state of one run on one process: model, optimizer, data, progress."""

    def __init__(self, cfg: TrainConfig, progress_bar: bool = True) -> None:
        from accelerate.utils import set_seed

        self.cfg, self.acc = cfg, make_accelerator(cfg.precision)
        set_seed(cfg.seed)
        resumed = state.load(cfg.resume) if cfg.resume else None
        self.setup = setup.build(cfg, resumed)
        self.trainable = setup.freeze_all_but(self.setup.model, cfg.freeze_all_but)
        optimizer = setup.make_optimizer(self.setup.model, cfg)
        self.model, self.optimizer = self.acc.prepare(self.setup.model, optimizer)
        acc, n_train = self.acc, len(self.setup.train_set)
        self.progress = Progress(
            global_batch=cfg.batch_size * acc.num_processes, train_items=n_train
        )
        if resumed is not None:
            self._restore(resumed)
        self.batches = Batches(
            n_train, cfg.batch_size, acc.num_processes, acc.process_index, cfg.seed
        )
        self.losses: list[float] = []  # this run's per-step losses
        self.run_start, self.timed_s, self.timed_tokens = time.perf_counter(), 0.0, 0
        self.elapsed_before = self.progress.elapsed_s  # earlier runs of a resumed training
        self.bar = None
        if progress_bar and acc.is_main_process:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=cfg.max_steps, initial=self.progress.step, unit="step")

    def _restore(self, resumed: state.Resumed) -> None:
        t, now = resumed.trainer, self.progress
        if t["global_batch"] != now.global_batch:
            raise TrainError(
                f"{resumed.path}: trained with a global batch of {t['global_batch']}, this run "
                f"has {now.global_batch}; resume with the same batch size x processes."
            )
        if t["train_items"] != now.train_items:
            raise TrainError(
                f"{resumed.path}: trained on {t['train_items']} training blocks/examples, the data "
                f"now gives {now.train_items}; resume needs the same data."
            )
        optimizer_state = state.optimizer_from_safetensors(t["optimizer"], resumed.tensors)
        self.optimizer.load_state_dict(optimizer_state)
        state.set_rng_state(t["rng"], resumed.tensors)
        self.progress = resumed.progress()
        self.progress.global_batch, self.progress.train_items = now.global_batch, now.train_items

    def fetch(self, dataset: Any, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(inputs, labels) on the device, and the count of real (unpadded) input tokens."""
        items = [dataset[i] for i in indices]
        x, y = data.collate(items, self.setup.pad_id)
        n = sum(
            len(item.input_ids if isinstance(item, data.Example) else item[0]) for item in items
        )
        return x.to(self.acc.device), y.to(self.acc.device), n

    def step(self) -> tuple[float, int]:
        """One optimizer step over grad_accum micro-batches: (mean loss, input tokens here)."""
        cfg, acc, model = self.cfg, self.acc, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.progress.step, cfg)
        total, tokens = 0.0, 0
        for k in range(cfg.grad_accum):
            indices = self.batches.indices(self.progress.micro_batches)
            x, y, n = self.fetch(self.setup.train_set, indices)
            self.progress.micro_batches += 1
            last = k == cfg.grad_accum - 1
            with nullcontext() if last else acc.no_sync(model), acc.autocast():
                loss = batch_loss(model, x, y, weighting=cfg.loss_weighting)
                acc.backward(loss / cfg.grad_accum)
            total += loss.item() / cfg.grad_accum
            tokens += n
        if cfg.grad_clip:
            acc.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.step += 1
        return total, tokens

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss per target token over the first eval_steps global batches."""
        dataset = self.setup.val_set
        if not dataset:
            return None
        acc, B = self.acc, self.cfg.batch_size
        G = B * acc.num_processes
        raw = acc.unwrap_model(self.model).eval()
        sums = torch.zeros(2, dtype=torch.float64, device=acc.device)  # (nll, targets)
        for g in range(min(self.cfg.eval_steps, math.ceil(len(dataset) / G))):
            start = g * G + acc.process_index * B
            indices = [i for i in range(start, start + B) if i < len(dataset)]
            if indices:
                x, y, _ = self.fetch(dataset, indices)
                with acc.autocast():
                    sums[0] += batch_loss(raw, x, y, reduction="sum").double()
                sums[1] += (y != data.IGNORE).sum()
        raw.train()
        nll, count = acc.reduce(sums, reduction="sum").tolist()
        return nll / count

    def emit(self, record: dict[str, Any]) -> None:
        """Log a record, and append it to the live events file when the run has one."""
        self.progress.log.append(record)
        if self.cfg.events and self.acc.is_main_process:
            with open(self.cfg.events, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def timed_step(self) -> str | None:
        """One step, logged and shown; why to stop when any process is over the time budget or
        sees the stop file, else None."""
        acc, p, t0 = self.acc, self.progress, time.perf_counter()
        loss, tokens = self.step()
        budget, stop_file = self.cfg.max_minutes, self.cfg.stop_file
        over = budget is not None and time.perf_counter() - self.run_start > 60 * budget
        asked = stop_file is not None and os.path.exists(stop_file)
        stats = torch.tensor([loss, tokens, over, asked], device=acc.device, dtype=torch.float64)
        stats = acc.reduce(stats, reduction="sum")  # one collective: losses, tokens, stop flags
        loss, tokens = stats[0].item() / acc.num_processes, int(stats[1].item())
        dt = time.perf_counter() - t0
        p.elapsed_s = self.elapsed_before + time.perf_counter() - self.run_start  # wall time
        p.tokens += tokens
        if self.losses:  # a process's first step warms up kernels: not timed
            self.timed_s, self.timed_tokens = self.timed_s + dt, self.timed_tokens + tokens
        self.losses.append(loss)
        rate = self.timed_tokens / self.timed_s if self.timed_s else tokens / dt
        lr = lr_at(p.step - 1, self.cfg)
        self.emit({"step": p.step, "loss": loss, "lr": lr, "tokens_per_s": rate})
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}")
        if stats[2].item() > 0:
            return "time budget"
        return "stop file" if stats[3].item() > 0 else None

    def log_eval(self) -> float | None:
        val_loss = self.evaluate()
        if val_loss is not None:
            entry = {
                "step": self.progress.step,
                "val_loss": val_loss,
                "val_ppl": math.exp(val_loss),
            }
            self.emit(entry)
        return val_loss

    def metrics(self, stopped: str) -> dict[str, Any]:
        p = self.progress
        val = [r["val_loss"] for r in p.log if "val_loss" in r]
        return {
            "step": p.step,
            "train_loss": self.losses[-1] if self.losses else None,
            "val_loss": val[-1] if val else None,
            "val_ppl": math.exp(val[-1]) if val else None,
            "tokens": p.tokens,
            "elapsed_s": p.elapsed_s,
            "stopped": stopped,
            "tokens_per_s": self.timed_tokens / self.timed_s if self.timed_s else 0.0,
        }

    def save(self, metrics: dict[str, Any]) -> None:
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state.save(
                self.cfg.out,
                self.acc.unwrap_model(self.model),
                self.setup.tokenizer,
                self.optimizer.state_dict(),
                dataclasses.replace(self.cfg, resume=None),
                self.progress,
                metrics,
            )
        self.acc.wait_for_everyone()


def train(
    cfg: TrainConfig, *, progress_bar: bool = True, stop_at: int | None = None
) -> TrainResult:
    """Run (or resume) training to `max_steps`, the time budget, or `stop_at` (an interruption)."""
    loop = Loop(cfg, progress_bar)
    p, stopped = loop.progress, "max_steps"
    best = state.Best()
    while p.step < cfg.max_steps:
        if reason := loop.timed_step():
            stopped = reason
        elif stop_at is not None and p.step >= stop_at:
            stopped = "stop_at"
        if stopped != "max_steps" or p.step >= cfg.max_steps:
            break
        if p.step % cfg.eval_every == 0:
            best.offer(loop, loop.log_eval())
        if p.step % cfg.save_every == 0:
            loop.save(loop.metrics("running"))
    last = p.log[-1] if p.log else {}
    val_loss = last["val_loss"] if "val_loss" in last else loop.log_eval()
    best.offer(loop, val_loss)
    metrics = loop.metrics(stopped)
    if cfg.keep_best and best.step is not None and best.step != p.step:
        best.restore(loop)
        val_loss = best.loss
        metrics.update(val_loss=val_loss, val_ppl=math.exp(val_loss))
    if best.step is not None:
        metrics.update(best_step=best.step, best_val_loss=best.loss)
    loop.save(metrics)
    if loop.bar is not None:
        loop.bar.close()
    ppl = math.exp(val_loss) if val_loss is not None else None
    return TrainResult(
        Path(cfg.out), p.step, loop.losses, val_loss, ppl, metrics["tokens_per_s"], stopped
    )
