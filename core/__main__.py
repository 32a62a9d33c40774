"""Command line: `python -m core generate "..."` and `python -m core chat` (streaming)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import offline

offline.apply()  # before any library reads them

from core import encoder_cli
from core.generate.logits import SettingsError
from core.generate.settings import DEFAULTS, MODES, GenerationSettings
from core.generate.trace import check_top_n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core", description="Generate text with ScratchGPT."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    generate = sub.add_parser("generate", help="complete one prompt and stream the answer")
    generate.add_argument("prompt")
    generate.add_argument(
        "--raw", action="store_true", help="continue the text as is (no chat template)"
    )
    generate.add_argument(
        "--logprobs",
        type=int,
        default=0,
        metavar="N",
        help="after the answer, each token's probability and its N likeliest alternatives (1-20)",
    )
    chat = sub.add_parser("chat", help="an interactive chat in the terminal")
    encoder_cli.add_commands(sub)
    chat.add_argument("--system", default="You are a helpful assistant.", help="system prompt")
    for p in (generate, chat):
        p.add_argument(
            "--model", default="default", help="default, a .gguf, a checkpoint or HF dir"
        )
        p.add_argument("--dtype", default="auto", help="auto, fp32 or bf16")
        p.add_argument("--mode", choices=MODES, default=DEFAULTS.mode)
        p.add_argument("--temperature", type=float, default=DEFAULTS.temperature)
        p.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
        p.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
        p.add_argument("--repetition-penalty", type=float, default=DEFAULTS.repetition_penalty)
        p.add_argument(
            "--no-repeat-ngram",
            type=int,
            default=DEFAULTS.no_repeat_ngram_size,
            metavar="N",
            help="never repeat N tokens in a row, prompt included (0 turns it off)",
        )
        p.add_argument("--beams", type=int, default=DEFAULTS.num_beams, help="beam width (beam)")
        p.add_argument("--length-penalty", type=float, default=DEFAULTS.length_penalty)
        p.add_argument("--early-stopping", action="store_true")
        p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
        p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
        p.add_argument("--seed", type=int, default=None)
    return parser


def _settings(args: argparse.Namespace) -> GenerationSettings:
    settings = GenerationSettings(
        mode=args.mode,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram,
        num_beams=args.beams,
        length_penalty=args.length_penalty,
        early_stopping=args.early_stopping,
        max_new_tokens=args.max_new_tokens,
        stop=tuple(args.stop),
        seed=args.seed,
    )
    settings.validate()  # before the model loads: a bad flag fails in milliseconds
    return settings


def _print_stream(generation) -> None:
    for note in generation.notices:
        print(f"[{note}]", file=sys.stderr)
    for piece in generation:
        print(piece.text, end="", flush=True)
    print()


def _print_logprobs(llm, messages, settings: GenerationSettings, top_n: int) -> None:
    """Stream the answer, then one line per token: probability, then the alternatives."""
    from core.generate.traced import decode_traced

    prompt = llm.fit_prompt(messages, settings.max_new_tokens)
    for note in prompt.notices:
        print(f"[{note}]", file=sys.stderr)
    shown = ""
    for run in decode_traced(llm, prompt.ids, settings, top_n=top_n):
        if settings.mode != "beam" and run.text.startswith(shown):
            print(run.text[len(shown) :], end="", flush=True)
            shown = run.text
    print(run.text[len(shown) :] if run.text.startswith(shown) else "\n" + run.text)
    total = f"the model's log-probability of it all: {run.logprob:.3f}"
    print(f"\n# token, probability, top {top_n} ({total})")
    decode = llm.tokenizer.decode
    for i, step in enumerate(run.trace.steps):
        alternatives = "  ".join(f"{decode([t])!r} {p:.4f}" for t, p in step.stages[-1].top)
        print(f"{i:4d} {decode([step.token])!r:>16} {step.prob:.4f} | {alternatives}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in encoder_cli.COMMANDS:
        return encoder_cli.run(args)
    from core.generate.engine import LLM
    from core.load import ModelLoadError

    try:
        settings = _settings(args)
        if args.command == "generate" and not args.prompt.strip():
            raise SettingsError("the prompt is empty; give some text to complete.")
        if args.command == "generate" and args.logprobs:
            check_top_n(args.logprobs)
        llm = LLM.load(args.model, dtype=args.dtype)
        if args.command == "generate":
            messages = args.prompt if args.raw else [{"role": "user", "content": args.prompt}]
            if args.logprobs:
                _print_logprobs(llm, messages, settings, args.logprobs)
            else:
                _print_stream(llm.stream(messages, settings))
            return 0
        history = [{"role": "system", "content": args.system}] if args.system else []
        print(f"Chatting with {llm.name}. Empty line or Ctrl-D to quit.", file=sys.stderr)
        while True:
            try:
                line = input("> ").strip()
            except EOFError:
                return 0
            if not line:
                return 0
            history.append({"role": "user", "content": line})
            generation = llm.stream(history, settings, conversation="cli")  # turns reuse the cache
            _print_stream(generation)
            history.append({"role": "assistant", "content": generation.text})
    except (SettingsError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
