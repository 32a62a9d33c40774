"""Shared by the training tests: a tiny word corpus, its tokenizer and a tiny run's settings."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from core.train import data
from core.train.config import TrainConfig

WORDS = [
    "the",
    "king",
    "queen",
    "castle",
    "horse",
    "rides",
    "night",
    "day",
    "love",
    "war",
    "sword",
    "crown",
    "sings",
    "speaks",
]
TINY = dict(n_layer=2, n_head=2, n_embd=32, block_size=32)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the CI box is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(400)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tokenizer_dir(corpus, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("tok")
    data.train_tokenizer([corpus.read_text()], vocab_size=300).save(directory)
    return directory


def tiny(corpus, tokenizer_dir, out, **settings) -> TrainConfig:
    base = dict(
        data=[str(corpus)],
        out=str(out),
        tokenizer=str(tokenizer_dir),
        **TINY,
        batch_size=4,
        max_steps=20,
        lr=3e-3,
        warmup_steps=3,
        eval_every=5,
        eval_steps=4,
    )
    return TrainConfig(**{**base, **settings})


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
