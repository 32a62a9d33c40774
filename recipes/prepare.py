"""Write the recipe data directory: pre-training text, task and instruction JSONL, a manifest.

Layout under `root` (default `data/recipes/`):
  pretrain/<play>.txt                   every play, held-out scenes of the task plays removed
  plays/{train,val,test}.jsonl          {"prompt", "completion"}  (test rows add "task", "labels"
                                        and "passage", for channel scoring)
  instruct/{train,val,test}.jsonl       {"instruction", "input", "output"}  (test rows add them too)
  manifest.json                         seed, sizes, labels and chance per task

Sampling is seeded per task and split, so the same seed always writes the same bytes.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipes import tasks
from recipes.tasks import Example


@dataclass(frozen=True)
class Sizes:
    """How many examples to keep: per label for plays, per task for the instruction mix."""

    # Twelfth Night's training scenes give 1,205 windows (Hamlet's 2,867): 1,205 of each play
    # keep the training set balanced. Merchant of Venice's held-out scenes give 51 passages, so the
    # balanced test set has 500 rows. Validation windows come from their own scenes (The
    # Tempest's give 12).
    plays_train_per_label: int = 1205
    plays_val_per_label: int = 40
    plays_test_per_label: int = 50
    instruct_train_per_task: int = 1500
    # held-out rows per instruction task (fewer where the held-out scenes give fewer): at 60 a
    # 2-label task's standard error is 6 points, at 150 it is 4 (SmolLM2 answers fewer:
    # `run.Demo.smol_test_limits`)
    instruct_test_per_task: int = 150
    val_fraction: float = 0.05


def shuffled(items: Iterable[Example], key: str, seed: int) -> list[Example]:
    items = list(items)
    random.Random(f"{seed}:{key}").shuffle(items)
    return items


def balanced(examples: list[Example], per_label: int, key: str, seed: int) -> list[Example]:
    """Up to `per_label` examples of each answer, interleaved label by label (seeded)."""
    by_label: dict[str, list[Example]] = {}
    for example in shuffled(examples, key, seed):
        by_label.setdefault(example.output, []).append(example)
    picked = [group[:per_label] for group in by_label.values()]
    return [e for row in zip_longest_all(picked) for e in row]


def zip_longest_all(groups: list[list[Example]]) -> Iterable[list[Example]]:
    for i in range(max((len(g) for g in groups), default=0)):
        yield [g[i] for g in groups if i < len(g)]


def train_val(pool: list[Example], n_train: int, val_fraction: float, key: str, seed: int):
    """(train, val) drawn without overlap from a shuffled pool."""
    pool = shuffled(pool, key, seed)
    n_val = max(1, round(min(len(pool), n_train) * val_fraction))
    return pool[n_val : n_val + n_train], pool[:n_val]


def task_row(example: Example) -> dict[str, Any]:
    return {"prompt": example.instruction, "completion": example.output}


def test_row(example: Example, row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "task": example.task, "labels": list(example.labels)}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return len(lines)


def write_plays(root: Path, seed: int, sizes: Sizes) -> dict[str, Any]:
    split = tasks.play_examples(seed)
    n_labels = len(tasks.TASK_PLAYS)
    train = balanced(split["train"], sizes.plays_train_per_label, "plays:train", seed)
    val = balanced(split["val"], sizes.plays_val_per_label, "plays:val", seed)
    test = balanced(split["test"], sizes.plays_test_per_label, "plays:test", seed)
    counts = {
        "train": write_jsonl(root / "plays/train.jsonl", map(task_row, train)),
        "val": write_jsonl(root / "plays/val.jsonl", map(task_row, val)),
        "test": write_jsonl(
            root / "plays/test.jsonl",
            ({**test_row(e, task_row(e)), "passage": e.input} for e in test),
        ),
    }
    per_label_counts = {
        name: dict(Counter(e.output for e in rows))
        for name, rows in (("train", train), ("test", test))
    }
    return {
        "sizes": counts,
        "per_label": per_label_counts,
        "labels": list(test[0].labels),
        "chance": 1 / n_labels,
    }


def write_instruct(root: Path, seed: int, sizes: Sizes) -> dict[str, Any]:
    split = tasks.instruction_examples(seed)
    train, val, test, info = [], [], [], {}
    for task, scoring in tasks.SCORING.items():
        if task == "plays":
            continue
        pool = [e for e in split["train"] if e.task == task]
        t, v = train_val(pool, sizes.instruct_train_per_task, sizes.val_fraction, task, seed)
        train, val = train + t, val + v
        held = [e for e in split["test"] if e.task == task]
        if scoring == "label":  # balanced over the answers (speaker: over every play's names)
            per_label = -(-sizes.instruct_test_per_task // len({e.output for e in held}))
            held = balanced(held, per_label, f"{task}:test", seed)
        chosen = shuffled(held, f"{task}:test", seed)[: sizes.instruct_test_per_task]
        test += chosen if scoring else []
        info[task] = {"train": len(t), "test": len(chosen) if scoring else 0, "scoring": scoring}
    write_jsonl(root / "instruct/train.jsonl", (e.alpaca() for e in shuffled(train, "mix", seed)))
    write_jsonl(root / "instruct/val.jsonl", (e.alpaca() for e in val))
    write_jsonl(root / "instruct/test.jsonl", (test_row(e, e.alpaca()) for e in test))
    return {"tasks": info}


def write_pretrain(root: Path, seed: int) -> dict[str, Any]:
    target = root / "pretrain"
    target.mkdir(parents=True, exist_ok=True)
    texts = tasks.pretraining_texts(seed)
    for name, text in texts.items():
        (target / name).write_text(text, encoding="utf-8")
    return {"files": len(texts), "chars": sum(len(t) for t in texts.values())}


def prepare(root: str | Path = "data/recipes", seed: int = 0, sizes: Sizes = Sizes()) -> dict:
    """Write every split under `root` and return the manifest (also saved as manifest.json)."""
    root = Path(root)
    manifest = {
        "seed": seed,
        "held_out_scenes": {k: sorted(v) for k, v in tasks.held_out_scenes(seed).items()},
        "pretrain": write_pretrain(root, seed),
        "plays": write_plays(root, seed, sizes),
        "instruct": write_instruct(root, seed, sizes),
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
