"""`python -m recipes mlm-demo`: pre-train a small BERT-style encoder by masked-LM on Shakespeare
and the KJV (time-capped, CPU), then score it on held-out text against a unigram baseline and
write fill-mask examples to `<data>/results/mlm-demo.json`.

Held out: every 12th play and every 20th KJV chapter; the encoder never trains on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recipes import corpora
from recipes.run import RecipeError

FILL_MASK_EXAMPLES = (
    "To be or not to [MASK], that is the question.",
    "In the beginning God created the heaven and the [MASK].",
    "O Romeo, Romeo, wherefore art thou [MASK]?",
    "And the LORD spake unto [MASK], saying,",
    "My lord, I will [MASK] you to the king.",
    "Thou shalt love thy [MASK] as thyself.",
)


@dataclass
class MLMDemo:
    """Paths and settings; the measured outcome of a run is in recipes/RESULTS.md."""

    data: str = "data/recipes"
    models: str = "models"
    seed: int = 0
    minutes: float = 18.0  # wall-time cap on training: a slower machine stops at fewer steps
    # torch threads: on a busy shared CPU one thread ran this model's steps 10x faster than two
    # (OpenMP's threads wait on each other for time slices); raise it on an idle machine
    threads: int = 1
    train: dict[str, Any] = field(
        default_factory=lambda: {
            # pre-LN with rotary positions: with learned absolute ones a 1,000-step run stayed on
            # the plateau where an MLM predicts the unigram distribution (1.1x the baseline)
            "arch": "bert_rope",
            "vocab_size": 2048,
            "n_layer": 3,
            "n_head": 4,
            "n_embd": 128,
            "block_size": 32,
            "batch_size": 32,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 100,
            "max_steps": 6000,
            "eval_every": 500,
            "eval_steps": 8,
            "save_every": 1000,
            "val_fraction": 0.02,
            "weight_decay": 0.01,
        }
    )

    @property
    def corpus(self) -> Path:
        return Path(self.data) / "mlm"

    @property
    def out(self) -> Path:
        return Path(self.models) / "mlm-demo"


def write_corpus(root: Path) -> dict[str, int]:
    """Training and held-out text files under `root/train` and `root/heldout`."""
    counts = {"train": 0, "heldout": 0}
    for split in counts:
        (root / split).mkdir(parents=True, exist_ok=True)
    for i, key in enumerate(corpora.play_keys()):
        split = "heldout" if i % 12 == 0 else "train"
        text = corpora.read_play(key).text()
        (root / split / f"{key}.txt").write_text(text, encoding="utf-8")
        counts[split] += len(text)
    chapters: dict[tuple[str, int], list[str]] = {}
    for verse in corpora.read_bible():
        chapters.setdefault((verse.book, verse.chapter), []).append(verse.text)
    books: dict[str, dict[str, list[str]]] = {"train": {}, "heldout": {}}
    for n, ((book, _), verses) in enumerate(chapters.items()):
        books["heldout" if n % 20 == 0 else "train"].setdefault(book, []).extend(verses)
    for split, by_book in books.items():
        for book, verses in by_book.items():
            text = "\n".join(verses) + "\n"
            (root / split / f"kjv_{book.replace(' ', '_')}.txt").write_text(text, encoding="utf-8")
            counts[split] += len(text)
    return counts


def train(demo: MLMDemo) -> None:
    """`python -m core.train mlm ...` in a subprocess: the CLI a user runs."""
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in demo.train.items()]
    data, out = str(demo.corpus / "train"), str(demo.out)
    command = [sys.executable, "-m", "core.train", "mlm", "--data", data, "--out", out]
    command += [f"--seed={demo.seed}", f"--max-minutes={demo.minutes}", "--no-progress", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": str(demo.threads)}
    if subprocess.run(command, env=env).returncode != 0:
        raise RecipeError(f"mlm-demo: training failed; see the error above ({' '.join(command)}).")


def evaluate(demo: MLMDemo) -> dict[str, Any]:
    """Masked-token accuracy on the held-out text vs the unigram baseline; fill-mask examples."""
    import torch

    from core import mlm
    from core.bert_weights import load_encoder
    from core.fill_mask import fill_mask
    from core.train.data import read_texts

    torch.set_num_threads(demo.threads)
    model, tokenizer = load_encoder(demo.out)
    masking = mlm.Masking.for_tokenizer(tokenizer)
    cls_sep = (mlm.special_id(tokenizer, "[CLS]"), mlm.special_id(tokenizer, "[SEP]"))
    held = [t for _, t in read_texts([demo.corpus / "heldout"])]
    blocks = mlm.MaskedBlocks(
        mlm.token_stream(held, tokenizer), model.config.block_size, masking, cls_sep, demo.seed
    )
    train_stream = mlm.token_stream([t for _, t in read_texts([demo.corpus / "train"])], tokenizer)
    torch.manual_seed(demo.seed)
    accuracy = mlm.masked_accuracy(model, blocks)
    baseline = mlm.unigram_accuracy(train_stream, blocks)
    metrics = json.loads((demo.out / "metrics.json").read_text(encoding="utf-8"))
    return {
        "steps": metrics["step"],
        "train_minutes": round(metrics["elapsed_s"] / 60, 1),
        "stopped": metrics["stopped"],
        "heldout_masked_tokens": int(
            sum(int((blocks[i][1] != -100).sum()) for i in range(len(blocks)))
        ),
        "masked_accuracy": accuracy,
        "unigram_accuracy": baseline,
        "ratio": accuracy / baseline,
        "fill_mask": {
            text: fill_mask(model, tokenizer, text, k=5)[0] for text in FILL_MASK_EXAMPLES
        },
        "settings": asdict(demo),
    }


def run(demo: MLMDemo, reuse: bool = False) -> dict[str, Any]:
    """Write the corpus, train (unless `reuse` and a checkpoint exists), evaluate, save results."""
    counts = write_corpus(demo.corpus)
    print(f"corpus: {counts['train']:,} chars to train on, {counts['heldout']:,} held out")
    if not (reuse and (demo.out / "metrics.json").exists()):
        train(demo)
    results = evaluate(demo)
    path = Path(demo.data) / "results" / "mlm-demo.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(
        f"held-out masked-token accuracy {results['masked_accuracy']:.3f} vs unigram "
        f"{results['unigram_accuracy']:.3f} ({results['ratio']:.1f}x) after {results['steps']} "
        f"steps in {results['train_minutes']} min; results in {path}"
    )
    for text, top in results["fill_mask"].items():
        print(f"  {text}  ->  " + ", ".join(f"{t} {p:.2f}" for t, p in top))
    return results
