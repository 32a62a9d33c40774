"""`python -m recipes prepare|pretrain|task|instruct|report|all|rag-model`: the demo recipes
(issue 6) and the grounded-QA fine-tune the app answers RAG questions with (issue 19).

Each step reads what the previous ones wrote (`data/recipes/`, `models/`), so steps can be rerun
one at a time; `all` runs them in order (what `make train-demo` does).
"""

from __future__ import annotations

import argparse
import sys

import offline

offline.apply()  # before any library reads them

from recipes import mlm, run
from recipes.corpora import CorpusMissing

STEPS = ("prepare", "pretrain", "task", "instruct", "eval", "report", "all", "rag-model")
STEPS += ("mlm-demo",)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=STEPS)
    parser.add_argument("--data", default="data/recipes", help="where data and results go")
    parser.add_argument("--models", default="models", help="where checkpoints go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-minutes", type=float, help="pre-training budget (default 28)")
    parser.add_argument(
        "--only", choices=("demo", "smollm2"), help="task/instruct: one model only; eval: its kind"
    )
    parser.add_argument("--reuse", action="store_true", help="skip results/checkpoints that exist")
    parser.add_argument("--model", help="eval: a model source (checkpoint dir or 'default')")
    parser.add_argument("--split", choices=("plays", "instruct"), help="eval: which held-out set")
    parser.add_argument("--name", help="eval: result name, e.g. plays-smollm2-before")
    parser.add_argument(
        "--smol-limits",
        type=int,
        nargs=2,
        metavar=("PLAYS", "PER_TASK"),
        help="SmolLM2 held-out rows: plays in all, instruction rows per task (default: Demo's)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    demo = run.Demo(data=args.data, models=args.models, seed=args.seed)
    if args.pretrain_minutes is not None:
        demo.pretrain_minutes = args.pretrain_minutes
    demo.reuse = args.reuse
    if args.smol_limits:
        demo.smol_test_limits = dict(zip(("plays", "instruct"), args.smol_limits, strict=True))
    models = (args.only,) if args.only else ("demo", "smollm2")
    steps = {
        "prepare": lambda: run.step_prepare(demo),
        "pretrain": lambda: run.step_pretrain(demo),
        "task": lambda: run.step_task(demo, models),
        "instruct": lambda: run.step_instruct(demo, models),
        "eval": lambda: run.step_eval(demo, args.model, args.split, args.only, args.name),
        "report": lambda: run.step_report(demo),
        "all": lambda: run.step_all(demo),
        "rag-model": lambda: run.step_rag_model(demo),
        "mlm-demo": lambda: mlm.run(mlm.MLMDemo(args.data, args.models, args.seed), args.reuse),
    }
    try:
        steps[args.step]()
    except (run.RecipeError, CorpusMissing) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
