"""The training CLI.

    python -m core.train pretrain --data corpus/ --out models/mine [--arch classic] [...]
    python -m core.train finetune --init models/mine --data train.jsonl --out models/mine-chat
    python -m core.train mlm --data corpus/ --out models/encoder [--arch bert] [--whole-word true]
    accelerate launch --multi_gpu --num_processes 2 -m core.train pretrain ...   # data-parallel

On a machine without CUDA the same command runs 2 CPU processes over gloo (accelerate 1.15's
`launch --cpu` starts a single process unless it is given an MPI hostfile).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from core.train import data, state
from core.train.config import TrainConfig, TrainError
from core.train.loop import train

# flag -> type; each overrides the same key of --config / the resumed settings
SHARED_FLAGS = {
    **dict.fromkeys(("out", "precision", "resume"), str),
    **dict.fromkeys(("lr", "min_lr", "weight_decay", "grad_clip", "val_fraction"), float),
    **dict.fromkeys(("max_minutes", "dropout"), float),
    **dict.fromkeys(("batch_size", "grad_accum", "warmup_steps", "max_steps", "seed"), int),
    **dict.fromkeys(("eval_every", "eval_steps", "save_every", "block_size"), int),
}
PRETRAIN_FLAGS = {
    "arch": str,
    "tokenizer": str,
    **dict.fromkeys(("vocab_size", "n_layer", "n_head", "n_embd"), int),
}


def boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


MLM_FLAGS = {**PRETRAIN_FLAGS, "mlm_probability": float, "whole_word": boolean}
FINETUNE_FLAGS = {
    "init": str,
    "val": str,
    "freeze_all_but": int,
    "keep_best": boolean,
    "loss_weighting": str,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core.train", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="mode", required=True)
    modes = (("pretrain", PRETRAIN_FLAGS), ("finetune", FINETUNE_FLAGS), ("mlm", MLM_FLAGS))
    for mode, extra in modes:
        sub = commands.add_parser(mode, help=f"{mode} a model")
        sub.add_argument("--data", nargs="+", help="text files/folders/globs, or JSONL files")
        sub.add_argument("--config", help="JSON file of settings; flags override it")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        for name, kind in {**SHARED_FLAGS, **extra}.items():
            default = getattr(TrainConfig, name, None)
            shown = f"default: {default}" if default is not None else None
            sub.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=shown)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults < the resumed run's settings < --config JSON < flags given on the command line."""
    settings: dict[str, Any] = {"arch": "bert"} if args.mode == "mlm" else {}  # an encoder
    if args.resume:
        settings.update(state.read_trainer(args.resume)["config"])
    if args.config:
        try:
            loaded = json.loads(Path(args.config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise TrainError(f"{args.config}: cannot read the config ({err}).") from err
        if not isinstance(loaded, dict):
            raise TrainError(f"{args.config}: the config must be a JSON object of settings.")
        settings.update(loaded)
    given = {k: v for k, v in vars(args).items() if v is not None}
    for key in ("config", "no_progress"):
        given.pop(key, None)
    settings.update(given)
    return TrainConfig.from_dict(settings, where=args.config or "settings")


def main(argv: list[str] | None = None) -> int:
    from core.checkpoint import CheckpointError
    from core.config import ConfigError
    from core.load import ModelLoadError
    from core.tokenizer import TokenizerError

    args = build_parser().parse_args(argv)
    try:
        result = train(config_from_args(args), progress_bar=not args.no_progress)
    except (
        TrainError,
        data.DataError,
        CheckpointError,
        ConfigError,
        ModelLoadError,
        TokenizerError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    if result.val_loss is not None:
        print(f"final val loss {result.val_loss:.4f}, perplexity {result.val_ppl:.2f}")
    print(f"step {result.step} ({result.stopped}); checkpoint in {result.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
