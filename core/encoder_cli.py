"""`python -m core fill-mask "..."` and `python -m core embed "..."`: the encoder's commands.

python -m core fill-mask "To be or not to [MASK]." [--model models/mlm-demo] [--top-k 5]
python -m core embed "some text" "more text"            # one JSON vector a line (MiniLM)
python -m core embed --word bank "the river bank" "the bank lent money"   # similarity table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COMMANDS = ("fill-mask", "embed")
DEMO_ENCODER = Path("models/mlm-demo")


def add_commands(sub: argparse._SubParsersAction) -> None:
    fill = sub.add_parser("fill-mask", help="the likeliest words for each [MASK] (an encoder)")
    fill.add_argument("text", help="text with one or more [MASK]")
    fill.add_argument("--model", default=str(DEMO_ENCODER), help="an encoder with an MLM head")
    fill.add_argument("--top-k", type=int, default=5)
    embed = sub.add_parser("embed", help="sentence embeddings, or one word's contextual vectors")
    embed.add_argument("texts", nargs="+", help="texts (sentences containing --word, with it)")
    embed.add_argument("--model", default=None, help="a BERT dir (default: all-MiniLM-L6-v2)")
    embed.add_argument("--word", help="compare this word's vectors across the sentences")


def run(args: argparse.Namespace) -> int:
    """Run one encoder command; a bad input is one line on stderr and exit code 2."""
    from core.bert_weights import load_encoder, minilm_path
    from core.mlm import MaskingError
    from core.weights import WeightsError

    try:
        path = Path(args.model) if args.model else minilm_path()
        if not path.is_dir():
            hint = " (run `make mlm-demo` to train it)" if path == DEMO_ENCODER else ""
            raise WeightsError(f"{path}: no such encoder directory{hint}.")
        model, tokenizer = load_encoder(path)
        if tokenizer is None:
            raise WeightsError(f"{path}: no tokenizer.json beside the weights.")
        if args.command == "fill-mask":
            _fill_mask(model, tokenizer, args.text, args.top_k)
        elif args.word:
            _word_table(model, tokenizer, args.word, args.texts)
        else:
            _embed(model, tokenizer, args.texts, path)
    except (MaskingError, WeightsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _fill_mask(model, tokenizer, text: str, k: int) -> None:
    from core.fill_mask import fill_mask

    for n, candidates in enumerate(fill_mask(model, tokenizer, text, k), start=1):
        print(f"[MASK] {n}: " + "  ".join(f"{token} {p:.3f}" for token, p in candidates))


def _word_table(model, tokenizer, word: str, sentences: list[str]) -> None:
    from core.fill_mask import similarity_table, word_vectors

    table = similarity_table(word_vectors(model, tokenizer, word, sentences))
    print(f"cosine similarity of {word!r} in each pair of sentences")
    for i, sentence in enumerate(sentences):
        print(" ".join(f"{v:5.2f}" for v in table[i].tolist()) + f"  {i + 1}. {sentence}")


def _embed(model, tokenizer, texts: list[str], path: Path) -> None:
    from core.bert_weights import encode_batch, max_seq_length
    from core.encoder import sentence_embeddings
    from core.mlm import MaskingError

    if not all(t.strip() for t in texts):
        raise MaskingError("a text is empty; give some words to embed.")
    limit = max_seq_length(path, model.config)  # sentence-transformers' truncation
    ids, mask = encode_batch(tokenizer, texts, limit, model.config.pad_token_id)
    for vector in sentence_embeddings(model, ids, mask).tolist():
        print(json.dumps([round(v, 6) for v in vector]))
