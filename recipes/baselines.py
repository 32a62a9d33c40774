"""Reference points for the demo's scores: the unigram baseline and the model's perplexity on the
pre-training validation split, sampled continuations, and naive Bayes on the "which play?" rows."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recipes.evaluate import read_rows


def unigram_perplexity(train_ids: Sequence[int], val_ids: Sequence[int], vocab_size: int) -> float:
    """exp(mean NLL) of `val_ids` under add-one-smoothed unigram counts of `train_ids`."""
    if not val_ids:
        raise ValueError("the validation split has no tokens; nothing to score.")
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    nll = sum(-math.log((counts[t] + 1) / total) for t in val_ids)
    return math.exp(nll / len(val_ids))


def split_stream(stream: Sequence[int], val_fraction: float, block_size: int):
    """(train ids, val target ids) as `core.train.data` splits the pre-training stream: the tail is
    validation, cut into blocks of block_size + 1 whose targets are the last block_size tokens."""
    n_val = int(len(stream) * val_fraction)
    train, val = list(stream[: len(stream) - n_val]), list(stream[len(stream) - n_val :])
    n_blocks = max(0, (len(val) - 1) // block_size)
    return train, val[1 : n_blocks * block_size + 1]


def pretrain_baseline(
    paths: Sequence[str | Path], model_dir: str | Path, val_fraction: float, block_size: int
) -> dict[str, Any]:
    """Unigram and model perplexity on every target token of the validation split the trainer
    uses (its own val ppl reads only `eval_steps` batches of it)."""
    from core.tokenizer import Tokenizer
    from core.train import data

    tokenizer = Tokenizer.from_dir(model_dir)
    stream = data.token_stream(data.read_texts(paths), tokenizer).tolist()
    train, val = split_stream(stream, val_fraction, block_size)
    ppl = unigram_perplexity(train, val, tokenizer.vocab_size)
    n_val = int(len(stream) * val_fraction)
    model_ppl = model_perplexity(model_dir, stream[len(stream) - n_val :], block_size)
    return {
        "unigram_ppl": ppl,
        "model_val_ppl_full": model_ppl,
        "train_tokens": len(train),
        "val_tokens": len(val),
    }


def model_perplexity(model_dir: str | Path, val: Sequence[int], block_size: int) -> float:
    """exp(mean NLL) of the model over non-overlapping blocks of `block_size` + 1 tokens."""
    import torch

    from core import kernels
    from core.generate.engine import LLM

    model = kernels.set_layout(LLM.load(model_dir, dtype="fp32").model, "row")  # many rows a step
    n_blocks = (len(val) - 1) // block_size
    ids = torch.tensor(val[: n_blocks * block_size + 1])
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, n_blocks, 32):
            rows = [
                ids[i * block_size : (i + 1) * block_size + 1]
                for i in range(start, min(start + 32, n_blocks))
            ]
            batch = torch.stack(rows)  # (B, T + 1)
            logits = model(batch[:, :-1])  # (B, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum"
            )
            nll, count = nll + loss.item(), count + batch[:, 1:].numel()
    return math.exp(nll / count)


def samples(
    source: str | Path,
    prompt: str,
    temperatures: Sequence[float] = (0.5, 0.8, 1.1),
    max_new_tokens: int = 120,
    seed: int = 0,
) -> dict[str, str]:
    """Sampled continuations of a raw text prompt, one per temperature (seeded)."""
    from core.generate.engine import LLM

    llm = LLM.load(source, dtype="fp32")
    knobs = {"mode": "sample", "top_k": 0, "top_p": 1.0, "max_new_tokens": max_new_tokens}
    return {
        str(t): prompt + llm.generate(prompt, temperature=t, seed=seed, **knobs)
        for t in temperatures
    }


def ngram_baseline(train_file: str | Path, test_file: str | Path) -> dict[str, Any]:
    """What classical text classifiers trained on the same rows score on the same held-out rows:
    multinomial naive Bayes over word counts and over character 2-5-grams (scikit-learn, which
    sentence-transformers installs). A reference for how much the passages give away."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.naive_bayes import MultinomialNB

    def passages(path: str | Path) -> tuple[list[str], list[str]]:
        rows = [r for r in read_rows(path) if "\n\nPassage: " in r["prompt"]]  # the question rows
        return [r["prompt"].rsplit("Passage: ", 1)[-1] for r in rows], [
            r["completion"] for r in rows
        ]

    (x_train, y_train), (x_test, y_test) = passages(train_file), passages(test_file)
    result: dict[str, Any] = {"n": len(y_test)}
    for name, vectorizer in (
        ("words", CountVectorizer()),
        ("char 2-5-grams", CountVectorizer(analyzer="char_wb", ngram_range=(2, 5))),
    ):
        model = MultinomialNB().fit(vectorizer.fit_transform(x_train), y_train)
        predicted = model.predict(vectorizer.transform(x_test))
        result[name] = sum(p == y for p, y in zip(predicted, y_test, strict=True)) / len(y_test)
    return result
