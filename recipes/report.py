"""Markdown tables from the recipe result files: pre-training, task and instruction fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRETRAIN_TARGET = 0.25  # the demo's val ppl must be below 25% of the unigram baseline's
SCORING_NOTE = (
    "Scoring: `channel` = noisy-channel classification (each play scored by the log-probability "
    "of the passage as the reply to 'Write a passage from <play>.'; the best is the answer); "
    "`rank` = rank classification (each label scored by the summed log-probability of "
    "its tokens and the end-of-turn token after the prompt; the best is the answer); `exact` = "
    "the greedy answer starts with the gold words. Generation accuracy = the first label named "
    "in the greedy answer."
)


def _load(results: Path, name: str) -> dict[str, Any] | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def pretrain_table(results: Path) -> list[str]:
    r = _load(results, "pretrain")
    if r is None:
        return ["Pre-training: not run."]
    met = "yes" if r["ratio"] < PRETRAIN_TARGET else "no"
    lines = [
        "| steps | tokens | minutes | trainer val ppl (eval batches) | val ppl (whole split) "
        "| unigram ppl (whole split) | ratio | target < 0.25 met |",
        "|---|---|---|---|---|---|---|---|",
        f"| {r['step']} | {r['tokens']:,} | {r['elapsed_s'] / 60:.1f} | {r['val_ppl']:.1f} "
        f"| {r.get('model_val_ppl_full', float('nan')):.1f} | {r['unigram_ppl']:.1f} "
        f"| {r['ratio']:.3f} | {met} |",
        "",
        "Samples (prompt `ROMEO.`):",
    ]
    for temperature, text in r.get("samples", {}).items():
        lines += ["", f"temperature {temperature}:", "```", text.strip(), "```"]
    return lines


def _acc(run: dict[str, Any] | None, task: str, key: str = "accuracy") -> float | None:
    return run.get(key, {}).get(task) if run else None


def _steps(results: Path, model_dir: str) -> str:
    ft = _load(results, f"ft-{model_dir}")
    if ft is None:
        return "—"
    kept = ft.get("best_step") if ft.get("settings", {}).get("keep_best") else None
    if kept is None:
        best = ""
    elif kept == ft["step"]:
        best = " (the last step's weights: its val loss was the lowest)"
    else:
        best = f" (weights of step {kept}, the lowest val loss)"
    return f"{ft['step']} steps{best}, {ft['elapsed_s'] / 60:.1f} min wall"


TASK_FT = {"demo": "demo-shakespeare-plays", "smollm2": "smollm2-plays-ft"}
INSTRUCT_FT = {"demo": "demo-shakespeare-instruct", "smollm2": "smollm2-instruct-ft"}


def task_table(results: Path, chance: float | None) -> list[str]:
    lines = [
        "| model | n | before (rank) | after (rank) | chance | after / chance "
        "| channel: before -> after | generation: before -> after | fine-tuning |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in ("demo", "smollm2"):
        before, after = (_load(results, f"plays-{model}-{s}") for s in ("before", "after"))
        acc = [_acc(r, "plays") for r in (before, after)]
        channel = [_acc(r, "plays", "channel_accuracy") for r in (before, after)]
        gen = [_acc(r, "plays", "generation_accuracy") for r in (before, after)]
        ratio = f"{acc[1] / chance:.1f}x" if acc[1] is not None and chance else "—"
        ns = {r["n"]["plays"] for r in (before, after) if r}
        n = "/".join(map(str, sorted(ns))) or "—"
        lines.append(
            f"| {model} | {n} | {_pct(acc[0])} | {_pct(acc[1])} | {_pct(chance)} | {ratio} "
            f"| {_pct(channel[0])} -> {_pct(channel[1])} | {_pct(gen[0])} -> {_pct(gen[1])} "
            f"| {_steps(results, TASK_FT[model])} |"
        )
    ngram = _load(results, "plays-ngram-baseline")
    if ngram:
        lines += [
            "",
            f"For reference, naive Bayes on the same training rows scores "
            f"{_pct(ngram['words'])} over word counts and {_pct(ngram['char 2-5-grams'])} "
            f"over character 2-5-grams on the same {ngram['n']} held-out rows.",
        ]
    return lines


def instruct_table(results: Path) -> list[str]:
    """Per task and model: before -> after (change); label tasks add generation accuracy."""
    lines = [
        "| task | scoring | model | n | before | after | change | generation before -> after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    runs = {
        (m, s): _load(results, f"instruct-{m}-{s}")
        for m in ("demo", "smollm2")
        for s in ("before", "after")
    }
    tasks = sorted({t for r in runs.values() if r for t in r["accuracy"]})
    for task in tasks:
        for model in ("demo", "smollm2"):
            before, after = runs[(model, "before")], runs[(model, "after")]
            if not (before or after):
                continue
            acc = [_acc(r, task) for r in (before, after)]
            change = "—" if None in acc else f"{100 * (acc[1] - acc[0]):+.1f} pts"
            scoring = (after or before).get("scoring", {}).get(task, "generation")
            gen = [_acc(r, task, "generation_accuracy") for r in (before, after)]
            shown = f"{_pct(gen[0])} -> {_pct(gen[1])}" if scoring == "rank" else "(same)"
            ns = {r["n"][task] for r in (before, after) if r and task in r["n"]}
            n = "/".join(map(str, sorted(ns))) or "—"
            lines.append(
                f"| {task} | {scoring} | {model} | {n} | {_pct(acc[0])} | "
                f"{_pct(acc[1])} | {change} | {shown} |"
            )
    steps = ", ".join(f"{m}: {_steps(results, d)}" for m, d in INSTRUCT_FT.items())
    return [*lines, "", f"Instruction fine-tuning: {steps}."]


def render(results: str | Path, manifest: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    results = Path(results)
    chance = manifest.get("plays", {}).get("chance")
    labels = ", ".join(manifest.get("plays", {}).get("labels", []))
    parts = [
        "## Pre-training (classic, from scratch, CPU)",
        "",
        *pretrain_table(results),
        "",
        f"## Task fine-tuning: which play? ({labels})",
        "",
        *task_table(results, chance),
        "",
        SCORING_NOTE,
        "",
        "## Instruction fine-tuning (held-out accuracy / exact match per task)",
        "",
        *instruct_table(results),
        "",
    ]
    return "\n".join(parts)
