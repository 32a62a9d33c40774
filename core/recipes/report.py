"""Markdown tables from the recipe result files: pre-training, task and instruction fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PRETRAIN_TARGET = 0.25  # the demo's val ppl must be below 25% of the unigram baseline's


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


def task_table(results: Path, chance: float | None) -> list[str]:
    lines = ["| model | before | after | chance | after / chance |", "|---|---|---|---|---|"]
    for model in ("demo", "smollm2"):
        before, after = (_load(results, f"plays-{model}-{s}") for s in ("before", "after"))
        acc = [r["accuracy"].get("plays") if r else None for r in (before, after)]
        ratio = f"{acc[1] / chance:.1f}x" if acc[1] is not None and chance else "—"
        n = (after or before or {}).get("n", {}).get("plays", "—")
        lines.append(
            f"| {model} (n={n}) | {_pct(acc[0])} | {_pct(acc[1])} | {_pct(chance)} | {ratio} |"
        )
    return lines


def instruct_table(results: Path) -> list[str]:
    lines = ["| task | n | demo before | demo after | SmolLM2 before | SmolLM2 after |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    runs = {f"{m}-{s}": _load(results, f"instruct-{m}-{s}") for m in ("demo", "smollm2")
            for s in ("before", "after")}  # fmt: skip
    tasks = sorted({t for r in runs.values() if r for t in r["accuracy"]})
    for task in tasks:
        n = next((r["n"][task] for r in runs.values() if r and task in r["n"]), "—")
        cells = [_pct(r["accuracy"].get(task)) if r else "—" for r in runs.values()]
        lines.append(f"| {task} | {n} | " + " | ".join(cells) + " |")
    return lines


def render(results: str | Path, manifest: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    results = Path(results)
    chance = manifest.get("plays", {}).get("chance")
    labels = ", ".join(manifest.get("plays", {}).get("labels", []))
    parts = [
        "## Pre-training (classic, from scratch, CPU)", "", *pretrain_table(results), "",
        f"## Task fine-tuning: which play? ({labels})", "", *task_table(results, chance), "",
        "## Instruction fine-tuning (held-out accuracy / exact match per task)", "",
        *instruct_table(results), "",
    ]  # fmt: skip
    return "\n".join(parts)
