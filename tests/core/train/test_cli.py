"""`python -m core.train`: data-parallel parity, pretrain then finetune, errors, SmolLM2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.generate.engine import LLM
from core.generate.settings import GenerationSettings
from core.train import __main__ as train_cli
from core.train import loop
from core.train.config import TrainConfig
from tests.core.train.conftest import read_log, tiny

ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str, launcher: tuple[str, ...] = (sys.executable,)) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*launcher, "-m", "core.train", *args, "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def tiny_flags(corpus, tokenizer_dir, out, batch_size: int) -> list[str]:
    return [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--tokenizer",
        str(tokenizer_dir),
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "32",
        "--max-steps",
        "6",
        "--warmup-steps",
        "2",
        "--lr",
        "3e-3",
        "--eval-every",
        "3",
        "--eval-steps",
        "2",
        "--batch-size",
        str(batch_size),
    ]


def test_two_processes_match_one_process_with_the_same_global_batch(
    corpus, tokenizer_dir, tmp_path
):
    """2 CPU processes x batch 2 vs 1 process x batch 4: the same examples per step, and DDP
    averages the two halves' gradients, so only float summation order differs (~1e-7 in the
    loss); 1e-5 over 6 steps leaves room for that to compound, and far less than one step's
    change in loss (~5e-2), so a wrong shard or a skipped all-reduce fails."""
    single = cli("pretrain", *tiny_flags(corpus, tokenizer_dir, tmp_path / "one", 4))
    assert single.returncode == 0, single.stderr
    launch = (
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "29517",
    )
    double = cli(
        "pretrain", *tiny_flags(corpus, tokenizer_dir, tmp_path / "two", 2), launcher=launch
    )
    assert double.returncode == 0, double.stderr
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [set(r) for r in one] == [set(r) for r in two] and len(one) == 8  # 6 steps + 2 evals
    for a, b in zip(one, two, strict=True):
        key = "loss" if "loss" in a else "val_loss"
        assert abs(a[key] - b[key]) < 1e-5, (a, b)
    assert one[-1]["val_loss"] < one[0]["loss"] - 0.1  # it trained
    assert double.stdout.count("checkpoint in") == 1  # only the main process reports


def test_cli_pretrain_then_finetune_gives_a_model_the_app_loads(corpus, tmp_path, capsys):
    out = tmp_path / "pre"
    args = [
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--vocab-size",
        "300",
        "--n-layer",
        "2",
        "--n-head",
        "2",
        "--n-embd",
        "32",
        "--block-size",
        "64",
        "--max-steps",
        "4",
    ]
    done = cli("pretrain", *args)
    assert done.returncode == 0, done.stderr
    assert "final val loss" in done.stdout and "perplexity" in done.stdout
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "log.jsonl",
        "loss.png",
        "metrics.json",
        "training_state/tensors.safetensors",
    ):
        assert (out / name).is_file(), name
    llm = LLM.load(str(out))
    assert llm.tokenizer.token_to_id("<|im_end|>") in llm.tokenizer.stop_token_ids
    assert isinstance(llm.generate("the king", GenerationSettings(max_new_tokens=5)), str)
    # finetune in-process through the same entry point, settings from a JSON config + flags
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(json.dumps({"instruction": "Name a royal", "output": "the queen"}) + "\n")
    config = tmp_path / "ft.json"
    config.write_text(json.dumps({"max_steps": 50, "lr": 1e-3, "batch_size": 1}))
    argv = [
        "finetune",
        "--init",
        str(out),
        "--data",
        str(jsonl),
        "--out",
        str(tmp_path / "ft"),
        "--config",
        str(config),
        "--max-steps",
        "3",
        "--no-progress",
    ]
    assert train_cli.main(argv) == 0
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["step"] == 3  # the flag overrode the JSON's 50
    chat = LLM.load(str(tmp_path / "ft"))
    reply = chat.generate(
        [{"role": "user", "content": "Name a royal"}], GenerationSettings(max_new_tokens=5)
    )
    assert isinstance(reply, str)


def test_cli_reports_bad_data_with_its_file_and_line(corpus, tokenizer_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert train_cli.main(["pretrain", "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert f"error: {empty}: the corpus is empty" in capsys.readouterr().err
    base = tiny(corpus, tokenizer_dir, tmp_path / "base", max_steps=1)
    loop.train(base, progress_bar=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n{"prompt": "x"}\n')
    argv = ["finetune", "--init", base.out, "--data", str(bad), "--out", str(tmp_path / "o")]
    assert train_cli.main(argv) == 2
    assert f"error: {bad}:2: missing field 'completion'" in capsys.readouterr().err


@pytest.mark.slow
def test_finetuning_smollm2_lowers_the_loss_on_its_examples(tmp_path):
    rows = [
        {"instruction": "Which play is this line from?", "input": line, "output": play}
        for line, play in [
            ("To be, or not to be", "Hamlet"),
            ("Out, damned spot!", "Macbeth"),
            ("O Romeo, Romeo!", "Romeo and Juliet"),
            ("Et tu, Brute?", "Julius Caesar"),
        ]
    ]
    jsonl = tmp_path / "plays.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = TrainConfig(
        mode="finetune",
        init="default",
        data=[str(jsonl)],
        val=str(jsonl),
        out=str(tmp_path / "ft"),
        freeze_all_but=2,
        batch_size=4,
        max_steps=10,
        lr=5e-4,
        warmup_steps=1,
        eval_every=100,
    )
    result = loop.train(cfg, progress_bar=False)
    assert result.losses[-1] < result.losses[0] * 0.7
    assert result.val_loss < result.losses[0] * 0.7  # the same examples, after the last step
    reply = LLM.load(cfg.out).generate(
        [
            {
                "role": "user",
                "content": "Which play is this line from?\n\nInput:\nTo be, or not to be",
            }
        ],
        GenerationSettings(max_new_tokens=8),
    )
    assert "Hamlet" in reply
