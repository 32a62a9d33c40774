"""What the training tabs show about a job, without Gradio: its status line (step, losses,
tokens/s, ETA), the loss curve's points, samples from its checkpoints, and a fine-tune's
before/after answers on held-out rows. Samples and answers are generated in a background thread
of the server, from the checkpoint the trainer last saved, and kept in the job's folder."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from core.train.data import to_messages
from webapp.jobs import Job

SAMPLE_TOKENS = 60
ANSWER_TOKENS = 48
MAX_POINTS = 400  # train-loss points drawn; longer runs are thinned evenly


def status_line(job: Job, now: float | None = None) -> str:
    """One Markdown line: mode, model, status, step, losses, tokens/s and ETA."""
    events = job.events()
    steps = [e for e in events if "loss" in e]
    vals = [e for e in events if "val_loss" in e]
    total = job.extra.get("max_steps", 0)
    parts = [f"**{job.mode} `{job.name}`: {job.status}**"]
    if steps:
        last = steps[-1]
        parts.append(f"step {last['step']}/{total}, train loss {last['loss']:.3f}")
        if vals:
            parts.append(f"val loss {vals[-1]['val_loss']:.3f}")
        parts.append(f"{last['tokens_per_s']:,.0f} tokens/s")
        eta = eta_s(job, last["step"], total, now)
        if job.active and eta is not None:
            parts.append(f"ETA {int(eta // 60)}:{int(eta % 60):02d}")
    elif job.active:
        parts.append("preparing the data and the model")
    if job.message:
        parts.append(job.message)
    return " · ".join(parts)


def eta_s(job: Job, step: int, total: int, now: float | None = None) -> float | None:
    """Seconds left at this run's pace (steps since it was launched, over its wall time)."""
    done = step - job.extra.get("launch_step", 0)
    if done <= 0 or not job.started:
        return None
    pace = ((now or time.time()) - job.started) / done
    return max(0.0, (total - step) * pace)


def curve(job: Job) -> list[dict[str, Any]]:
    """Points of the loss curve: {"step", "loss", "split"} for train and validation."""
    events = job.events()
    train = [e for e in events if "loss" in e]
    stride = max(1, len(train) // MAX_POINTS)
    kept = train[::stride] + ([train[-1]] if train and (len(train) - 1) % stride else [])
    points = [{"step": e["step"], "loss": e["loss"], "split": "train"} for e in kept]
    points += [
        {"step": e["step"], "loss": e["val_loss"], "split": "validation"}
        for e in events
        if "val_loss" in e
    ]
    return points


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return default


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_checkpoint(job: Job) -> Any:
    """The job's last checkpoint as an `LLM`; once more if the trainer swapped it in meanwhile."""
    from core.generate.engine import LLM

    try:
        return LLM.load(job.out)
    except (OSError, ValueError):
        time.sleep(0.5)
        return LLM.load(job.out)


def answer(llm: Any, messages: list[dict[str, str]], new: int) -> str:
    """A greedy reply, or why there is none (a prompt longer than a small model's context)."""
    try:
        return llm.generate(messages, max_new_tokens=new)
    except ValueError as err:
        return f"(no answer: {err})"


class Sampler:
    """Generates a job's samples and before/after answers, one at a time, off the UI thread."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def samples(self, job: Job) -> list[dict[str, Any]]:
        return read_json(job.path("samples.json"), [])

    def sample(self, job: Job, temperature: float | None = None) -> dict[str, Any]:
        """A continuation of the job's sample prompt by its last checkpoint, stored and returned."""
        step = job.checkpoint_step()
        if step is None:
            raise ValueError("No checkpoint yet: samples need the first one; wait a moment.")
        temp = job.extra.get("temperature", 0.8) if temperature is None else temperature
        llm = load_checkpoint(job)
        prompt = job.extra.get("prompt") or "The"
        mode = {"mode": "sample", "temperature": temp, "seed": step} if temp > 0 else {}
        new = min(SAMPLE_TOKENS, llm.config.block_size // 2)  # a tiny context leaves room
        try:
            text = prompt + llm.generate(prompt, max_new_tokens=new, **mode)
        except ValueError as err:  # a prompt longer than the context: kept, so it shows
            text = f"(no sample: {err})"
        entry = {"step": step, "temperature": temp, "text": text}
        with self._lock:
            write_json(job.path("samples.json"), [*self.samples(job), entry])
        return entry

    def due(self, job: Job) -> bool:
        """A new checkpoint `sample_every` steps past the last sample (or the final one)."""
        step = job.checkpoint_step()
        done = [s["step"] for s in self.samples(job)]
        every = job.extra.get("sample_every", 0)
        if job.mode != "pretrain" or step is None or not every or step in done:
            return False
        return not done or step >= done[-1] + every or not job.active

    def compare(self, job: Job) -> list[dict[str, str]]:
        """Held-out rows of a fine-tune: prompt, expected, the base's and the tuned answer."""
        stored = read_json(job.path("compare.json"), None)
        if stored is not None:
            return stored
        rows = []
        for number, line in enumerate(job.path("heldout.jsonl").read_text().splitlines(), 1):
            messages = to_messages(json.loads(line), f"held-out row {number}")
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            rows.append((messages[:last], messages[last]["content"]))
        try:
            before = self.registry.get(job.extra["base"])
            after = load_checkpoint(job)
        except (OSError, ValueError) as err:  # stored, so the page shows it and asks no more
            table = [{"prompt": "(no comparison)", "expected": "", "before": str(err), "after": ""}]
            write_json(job.path("compare.json"), table)
            return table
        new = min(ANSWER_TOKENS, after.config.block_size // 2)
        table = [
            {
                "prompt": prompt[-1]["content"],
                "expected": expected,
                "before": answer(before, prompt, new),
                "after": answer(after, prompt, new),
            }
            for prompt, expected in rows
        ]
        write_json(job.path("compare.json"), table)
        return table

    def in_background(self, work: Any, job: Job, *args: Any) -> bool:
        """Run `work(job, *args)` in a thread unless one is running; False when one was."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return False

            def run() -> None:
                try:
                    work(job, *args)
                except Exception as err:  # kept in the job's folder; the page keeps polling
                    job.path("sampler.log").write_text(f"{type(err).__name__}: {err}\n")

            self._thread = threading.Thread(target=run, daemon=True)
            self._thread.start()
            return True
