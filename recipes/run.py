"""The demo recipe steps: prepare data, pre-train, fine-tune (task, instruction), evaluate, report.

Training runs as `python -m core.train ...` in a subprocess (the same CLI a user runs); evaluation
runs in this process. Every step writes JSON under `<data>/results/`, so `report` can rebuild the
tables from whatever steps have finished.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipes import baselines, evaluate, prepare, report, tasks

SAMPLE_PROMPT = "ROMEO.\n"


class RecipeError(RuntimeError):
    """A recipe step failed; the message names the step and what to run first."""


@dataclass
class Demo:
    """Paths, settings and budgets of the demo; each setting's measured effect and the time each
    step takes are in recipes/RESULTS.md."""

    data: str = "data/recipes"
    models: str = "models"
    seed: int = 0
    pretrain_minutes: float = 28.0  # a cap on wall time: a slower machine stops at fewer steps
    pretrain: dict[str, Any] = field(
        default_factory=lambda: {
            "arch": "classic",
            "vocab_size": 8192,  # most character names are one or two tokens ("which play?")
            "n_layer": 6,
            "n_head": 8,
            "n_embd": 256,
            "block_size": 256,
            "batch_size": 16,
            "lr": 1.5e-3,
            "min_lr": 1.5e-4,
            "warmup_steps": 40,
            "max_steps": 800,
            "eval_every": 100,
            "eval_steps": 8,
            "save_every": 200,
            "val_fraction": 0.05,
            "weight_decay": 0.1,
        }
    )
    # fine-tunes weigh every example the same: the instruction mix's chat replies are far longer
    # than its one-word answers, which per-token weighting would leave little of the gradient
    demo_finetune: dict[str, Any] = field(
        default_factory=lambda: {
            "batch_size": 16,
            "lr": 3e-4,
            "warmup_steps": 20,
            "max_steps": 700,
            "eval_every": 50,
            "eval_steps": 12,
            "save_every": 5000,
            "loss_weighting": "example",
        }
    )
    smol_finetune: dict[str, Any] = field(
        default_factory=lambda: {
            "block_size": 160,
            "batch_size": 4,
            "lr": 2e-4,
            "warmup_steps": 10,
            "max_steps": 400,
            "eval_every": 50,
            "eval_steps": 6,
            "save_every": 5000,
            "freeze_all_but": 6,
            "loss_weighting": "example",
        }
    )
    # "Which play?" weighs every answer token the same: its titles are 2 to 7 demo tokens, and
    # per-example weighting overweights the token that decides a short title, biasing answers
    # toward short titles
    demo_plays: dict[str, Any] = field(
        default_factory=lambda: {
            "loss_weighting": "token",
            "lr": 8e-4,
        }
    )
    # SmolLM2 on "which play?": 400 steps score clearly lower, 1,600 barely higher for twice the
    # time while the validation loss rises
    smol_plays: dict[str, Any] = field(
        default_factory=lambda: {
            "max_steps": 800,
            "eval_every": 100,
        }
    )
    # Per split: keep the weights of the lowest validation loss (evaluated every 50 steps)? Not
    # for "which play?": its validation loss (a few answer tokens per row) is too noisy to pick a
    # step by, and its lowest-loss weights scored well below the last ones
    keep_best: dict[str, bool] = field(default_factory=lambda: {"plays": False, "instruct": True})
    # SmolLM2's instruction tuning trains 8 blocks for 1,000 steps: with 6 blocks and 700 steps
    # its scores barely moved
    smol_instruct: dict[str, Any] = field(
        default_factory=lambda: {
            "lr": 3e-4,
            "max_steps": 1000,
            "eval_every": 100,
            "freeze_all_but": 8,
        }
    )
    demo_instruct: dict[str, Any] = field(
        default_factory=lambda: {
            "max_steps": 800,  # 2 epochs of the 6,265-row instruction mix
        }
    )
    # `make rag-model`: grounded-QA rows (recipes/grounded.py), SmolLM2's last 8 blocks in bf16
    # (1.4x fp32's tokens/s on an avx512_bf16 CPU); the time cap keeps it under an hour on 2 cores
    rag_rows: tuple[int, int] = (2400, 40)
    rag_finetune: dict[str, Any] = field(
        default_factory=lambda: {
            "block_size": 1024,
            "batch_size": 4,
            "lr": 2e-4,
            "warmup_steps": 10,
            "max_steps": 200,
            "max_minutes": 40.0,
            "eval_every": 40,
            "eval_steps": 5,
            "save_every": 40,
            "freeze_all_but": 8,
            "loss_weighting": "example",
            "precision": "bf16",
            "keep_best": True,
        }
    )
    demo_test_limit: int | None = None  # held-out rows per task for the demo model (None: all)
    # SmolLM2 answers slowly on a CPU: held-out rows per task (None: all, the rows the demo is
    # scored on)
    smol_test_limits: dict[str, int | None] = field(
        default_factory=lambda: {"plays": None, "instruct": 80}
    )
    # Greedy answers to SmolLM2's label rows (generation accuracy beside rank accuracy) cost most
    # of its evaluation time; off, its label tasks are scored by rank classification only.
    smol_label_generation: bool = False
    # Channel scoring costs SmolLM2 one pass per row and play; off, only the demo's plays rows
    # are channel-scored
    smol_channel: bool = False
    max_new_tokens: int = 10
    reuse: bool = False  # keep results and fine-tuned checkpoints that already exist

    def path(self, *parts: str) -> Path:
        return Path(self.data, *parts)

    def model(self, name: str) -> Path:
        return Path(self.models, name)


PRETRAINED, PLAYS_FT, INSTRUCT_FT = (
    "demo-shakespeare",
    "demo-shakespeare-plays",
    "demo-shakespeare-instruct",
)
SMOL_PLAYS_FT, SMOL_INSTRUCT_FT = "smollm2-plays-ft", "smollm2-instruct-ft"
RAG_FT = "smollm2-rag"  # the app answers RAG questions with it when present (webapp/models.py)


def flags(settings: dict[str, Any]) -> list[str]:
    return [item for k, v in settings.items() for item in ("--" + k.replace("_", "-"), str(v))]


def train(args: list[str]) -> None:
    """Run the trainer CLI; a failure is a `RecipeError` carrying its last lines of output."""
    command = [sys.executable, "-m", "core.train", *args, "--no-progress"]
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, text=True, capture_output=True)
    print(done.stdout[-2000:], end="", flush=True)
    if done.returncode != 0:
        raise RecipeError(f"`{' '.join(command)}` failed:\n{(done.stderr or done.stdout)[-3000:]}")


def save_result(demo: Demo, name: str, result: dict[str, Any]) -> None:
    target = demo.path("results", f"{name}.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def need(path: Path, step: str) -> Path:
    if not path.exists():
        raise RecipeError(f"{path} is missing; run `python -m recipes {step}` first.")
    return path


def step_prepare(demo: Demo) -> None:
    manifest = prepare.prepare(demo.data, demo.seed)
    print(json.dumps({k: manifest[k] for k in ("pretrain", "plays")}, indent=1))


def step_pretrain(demo: Demo) -> None:
    corpus = need(demo.path("pretrain"), "prepare")
    out = demo.model(PRETRAINED)
    settings = {**demo.pretrain, "seed": demo.seed, "max_minutes": demo.pretrain_minutes}
    if demo.reuse and (out / "metrics.json").exists():
        print(f"{PRETRAINED}: reusing {out}", flush=True)
    else:
        train(["pretrain", "--data", str(corpus), "--out", str(out), *flags(settings)])
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    baseline = baselines.pretrain_baseline(
        [corpus], out, settings["val_fraction"], settings["block_size"]
    )
    result = {
        **metrics,
        **baseline,
        "ratio": baseline["model_val_ppl_full"] / baseline["unigram_ppl"],
    }
    result["samples"] = baselines.samples(out, SAMPLE_PROMPT, seed=demo.seed)
    save_result(demo, "pretrain", result)


def run_eval(demo: Demo, source: str | Path, split: str, kind: str, name: str) -> dict[str, Any]:
    """Score `source` on a split's held-out rows as `results/<name>.json`; `kind` ("demo" or
    "smollm2") sets the row limit, greedy answers to label rows and channel scoring."""
    done = demo.path("results", f"{name}.json")
    if demo.reuse and done.exists():
        print(f"{name}: reusing {done}", flush=True)
        return json.loads(done.read_text(encoding="utf-8"))
    test = need(demo.path(split, "test.jsonl"), "prepare")
    demo_kind = kind == "demo"
    limit = demo.demo_test_limit if demo_kind else demo.smol_test_limits[split]
    generate = demo_kind or demo.smol_label_generation
    use_channel = split == "plays" and (demo_kind or demo.smol_channel)
    channel = tasks.PLAY_CHANNEL_PROMPT if use_channel else None
    result = evaluate.evaluate(source, test, demo.max_new_tokens, limit, generate, channel)
    save_result(demo, name, result)
    print(
        f"{name}: {result['accuracy']} (rank: {result['rank_accuracy']}; generation: "
        f"{result['generation_accuracy']}; {result['seconds']} s)",
        flush=True,
    )
    return result


def fitting(path: Path, model_dir: Path) -> Path:
    """A copy of a JSONL without the rows whose rendered chat does not fit the model's context."""
    from core.config import ModelConfig
    from core.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_dir(model_dir)
    context = ModelConfig.load(model_dir / "config.json").block_size
    rows = evaluate.read_rows(path)
    kept = [r for r in rows if evaluate.rendered_length(tokenizer, r) + 1 <= context]
    target = path.with_name(f"{path.stem}-ctx{context}.jsonl")
    prepare.write_jsonl(target, kept)
    print(f"{target}: {len(kept)} of {len(rows)} rows fit {context} tokens", flush=True)
    return target


def step_eval(
    demo: Demo, source: str | None, split: str | None, kind: str | None, name: str | None
) -> None:
    """One evaluation, e.g. to rerun a result."""
    if not (source and split and kind and name):
        raise RecipeError(
            "eval needs --model, --split, --only (the model kind: demo or "
            "smollm2) and --name (e.g. plays-smollm2-before)."
        )
    run_eval(demo, source, split, kind, name)


def finetune(demo: Demo, init: str | Path, split: str, out: str, settings: dict) -> None:
    """Fine-tune `init` on a split's train rows; the trainer's final metrics and the settings
    are saved as `results/ft-<out>.json` for the report."""
    settings = {**settings, "keep_best": demo.keep_best[split], "seed": demo.seed}
    if demo.reuse and (demo.model(out) / "metrics.json").exists():
        print(f"{out}: reusing {demo.model(out)}", flush=True)
    else:
        files = [need(demo.path(split, f"{s}.jsonl"), "prepare") for s in ("train", "val")]
        if Path(init).is_dir():  # our checkpoint: its context may be shorter than some examples
            files = [fitting(f, Path(init)) for f in files]
        args = ["finetune", "--init", str(init), "--data", str(files[0]), "--val", str(files[1])]
        train([*args, "--out", str(demo.model(out)), *flags(settings)])
    metrics = json.loads((demo.model(out) / "metrics.json").read_text(encoding="utf-8"))
    save_result(
        demo, f"ft-{out}", {"init": str(init), "split": split, "settings": settings, **metrics}
    )


def step_task(demo: Demo, models: tuple[str, ...] = ("demo", "smollm2")) -> None:
    """'Which play?' fine-tuning of the demo model and of SmolLM2, evaluated before and after."""
    plays = [need(demo.path("plays", f"{s}.jsonl"), "prepare") for s in ("train", "test")]
    save_result(demo, "plays-ngram-baseline", baselines.ngram_baseline(*plays))
    if "demo" in models:
        pretrained = need(demo.model(PRETRAINED), "pretrain")
        run_eval(demo, pretrained, "plays", "demo", "plays-demo-before")
        finetune(demo, pretrained, "plays", PLAYS_FT, {**demo.demo_finetune, **demo.demo_plays})
        run_eval(demo, demo.model(PLAYS_FT), "plays", "demo", "plays-demo-after")
    if "smollm2" in models:
        run_eval(demo, "default", "plays", "smollm2", "plays-smollm2-before")
        finetune(demo, "default", "plays", SMOL_PLAYS_FT, {**demo.smol_finetune, **demo.smol_plays})
        run_eval(demo, demo.model(SMOL_PLAYS_FT), "plays", "smollm2", "plays-smollm2-after")


def step_instruct(demo: Demo, models: tuple[str, ...] = ("demo", "smollm2")) -> None:
    """Instruction fine-tuning of the demo model and of SmolLM2 on the mixed set, before/after."""
    if "demo" in models:
        pretrained = need(demo.model(PRETRAINED), "pretrain")
        run_eval(demo, pretrained, "instruct", "demo", "instruct-demo-before")
        settings = {**demo.demo_finetune, **demo.demo_instruct}
        finetune(demo, pretrained, "instruct", INSTRUCT_FT, settings)
        run_eval(demo, demo.model(INSTRUCT_FT), "instruct", "demo", "instruct-demo-after")
    if "smollm2" in models:
        run_eval(demo, "default", "instruct", "smollm2", "instruct-smollm2-before")
        settings = {**demo.smol_finetune, **demo.smol_instruct}
        finetune(demo, "default", "instruct", SMOL_INSTRUCT_FT, settings)
        run_eval(
            demo, demo.model(SMOL_INSTRUCT_FT), "instruct", "smollm2", "instruct-smollm2-after"
        )


def step_rag_model(demo: Demo) -> None:
    """Grounded-QA fine-tuning of SmolLM2 (issue 19): rows from Python's documentation, never
    the benchmark's manuals, then `models/smollm2-rag`; bench/rag_answers.py scores it."""
    from recipes import grounded

    root = demo.path("rag")
    if not (demo.reuse and (root / "train.jsonl").exists()):
        print(json.dumps(grounded.write(root, *demo.rag_rows, demo.seed)), flush=True)
    out = demo.model(RAG_FT)
    settings = {**demo.rag_finetune, "seed": demo.seed}
    if demo.reuse and (out / "metrics.json").exists():
        print(f"{RAG_FT}: reusing {out}", flush=True)
    else:
        files = ["--data", str(root / "train.jsonl"), "--val", str(root / "val.jsonl")]
        train(["finetune", "--init", "default", *files, "--out", str(out), *flags(settings)])
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    save_result(demo, f"ft-{RAG_FT}", {"init": "default", "settings": settings, **metrics})


def step_report(demo: Demo) -> str:
    text = report.render(demo.path("results"), prepare_manifest(demo))
    demo.path("results", "report.md").write_text(text, encoding="utf-8")
    print(text)
    return text


def prepare_manifest(demo: Demo) -> dict[str, Any]:
    path = demo.path("manifest.json")
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def step_all(demo: Demo) -> None:
    save_result(demo, "demo-settings", asdict(demo))
    step_prepare(demo)
    step_pretrain(demo)
    step_task(demo)
    step_instruct(demo)
    step_report(demo)
