"""core.train: overfitting, exact resume, freezing, keep-best, sharding, loss and schedule."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

from core import checkpoint
from core.generate.engine import LLM
from core.model import Decoder
from core.tokenizer import Tokenizer
from core.train import data, loop, setup
from core.train.config import TrainConfig, TrainError, lr_at
from tests.core.train.conftest import TINY, WORDS, read_log, tiny


def test_a_tiny_model_overfits_one_batch(corpus, tokenizer_dir, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text(corpus.read_text()[:420], encoding="utf-8")  # a handful of 32-token blocks
    cfg = tiny(one, tokenizer_dir, tmp_path / "m", val_fraction=0.0, n_embd=64, n_head=4)
    tok = Tokenizer.from_dir(tokenizer_dir)
    blocks = len(data.pretrain_datasets(data.read_texts([one]), tok, 32, 0.0)[0])
    assert 2 <= blocks <= 8
    cfg = dataclasses.replace(cfg, batch_size=blocks, max_steps=150, weight_decay=0.0, min_lr=3e-3)
    result = loop.train(cfg, progress_bar=False)
    assert result.losses[0] > 5 and result.losses[-1] < 0.05


@pytest.mark.parametrize("dropout", [0.0, 0.2])  # dropout masks come from the restored RNG
def test_resume_is_exact(corpus, tokenizer_dir, tmp_path, dropout):
    cfg = tiny(corpus, tokenizer_dir, tmp_path / "straight", grad_accum=2, dropout=dropout)
    assert setup.build(cfg, None).model.dropout == dropout
    straight = loop.train(cfg, progress_bar=False)
    half = dataclasses.replace(cfg, out=str(tmp_path / "halves"))
    first = loop.train(half, progress_bar=False, stop_at=10)
    assert first.stopped == "stop_at" and first.step == 10
    torch.manual_seed(123)  # disturb every RNG: resume must restore them from disk
    random.seed(123)
    second = loop.train(dataclasses.replace(half, resume=half.out), progress_bar=False)
    losses = first.losses + second.losses
    assert len(losses) == len(straight.losses) == 20
    assert max(abs(a - b) for a, b in zip(losses, straight.losses, strict=True)) < 1e-6
    assert abs(second.val_loss - straight.val_loss) < 1e-6
    steps = [r["step"] for r in read_log(Path(half.out)) if "loss" in r]
    assert steps == list(range(1, 21))  # the log carries on across the resume


def test_resume_refuses_another_architecture(corpus, tokenizer_dir, tmp_path):
    cfg = tiny(corpus, tokenizer_dir, tmp_path / "classic", max_steps=2)
    loop.train(cfg, progress_bar=False)
    other = dataclasses.replace(cfg, arch="llama", resume=cfg.out, out=str(tmp_path / "x"))
    with pytest.raises(TrainError, match="another architecture") as err:
        loop.train(other, progress_bar=False)
    assert str(Path(cfg.out) / "config.json") in str(err.value)
    bigger = dataclasses.replace(other, arch="classic", n_embd=64)
    with pytest.raises(TrainError, match="n_embd: checkpoint 32 vs run 64"):
        loop.train(bigger, progress_bar=False)


def test_resume_needs_training_state(corpus, tokenizer_dir, tmp_path):
    cfg = tiny(corpus, tokenizer_dir, tmp_path / "m", max_steps=1)
    loop.train(cfg, progress_bar=False)
    llm = LLM.load(cfg.out)
    plain = tmp_path / "plain"
    checkpoint.save(llm.model, plain, llm.tokenizer)
    with pytest.raises(TrainError, match="trainer.json: not found"):
        loop.train(dataclasses.replace(cfg, resume=str(plain)), progress_bar=False)


def test_freeze_all_but_trains_only_the_last_blocks_norm_and_head(corpus, tokenizer_dir, tmp_path):
    base = tiny(corpus, tokenizer_dir, tmp_path / "base", max_steps=2, arch="llama")
    base = dataclasses.replace(base, n_layer=3)
    loop.train(base, progress_bar=False)
    before = LLM.load(base.out).model.state_dict()
    # finetune from the checkpoint on a JSONL built from the corpus's words
    jsonl = tmp_path / "t.jsonl"
    rows = [{"prompt": f"{w} {w}", "completion": w} for w in WORDS]
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    ft = TrainConfig(
        mode="finetune",
        init=base.out,
        data=[str(jsonl)],
        out=str(tmp_path / "ft"),
        freeze_all_but=1,
        max_steps=3,
        batch_size=4,
        lr=1e-2,
        warmup_steps=1,
    )
    loop.train(ft, progress_bar=False)
    after = LLM.load(ft.out).model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.startswith(("blocks.2.", "ln_f.", "wte."))}
    # backward stops at the first trainable block: frozen blocks record no autograd graph
    model = LLM.load(base.out).model
    assert setup.freeze_all_but(model, 1) and not model.embed_grad
    needs_grad = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _i, out: needs_grad.append(out.requires_grad))
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    assert needs_grad == [False, False, True] and model.wte.weight.grad is not None


def test_keep_best_saves_the_weights_of_the_lowest_validation_loss(corpus, tokenizer_dir, tmp_path):
    base = tiny(corpus, tokenizer_dir, tmp_path / "base", max_steps=2)
    loop.train(base, progress_bar=False)
    # training replies with words of the first half only, validation with the second half: the
    # validation loss falls while the model learns the reply format, then rises
    half = len(WORDS) // 2
    for name, words in (("t", WORDS[:half]), ("v", WORDS[half:])):
        lines = [
            json.dumps({"prompt": f"{a} {b}", "completion": a}) + "\n" for a in words for b in WORDS
        ]
        (tmp_path / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    runs = {}
    for keep in (False, True):
        ft = TrainConfig(
            mode="finetune",
            init=base.out,
            data=[str(tmp_path / "t.jsonl")],
            val=str(tmp_path / "v.jsonl"),
            out=str(tmp_path / f"ft-{keep}"),
            keep_best=keep,
            max_steps=40,
            eval_every=5,
            eval_steps=8,
            batch_size=8,
            lr=3e-2,
            warmup_steps=2,
            seed=0,
        )
        runs[keep] = (ft, loop.train(ft, progress_bar=False))
    vals = {r["step"]: r["val_loss"] for r in read_log(Path(runs[True][0].out)) if "val_loss" in r}
    best_step = min(vals, key=vals.get)
    assert best_step < 40, "the test needs a run whose validation loss rises after its best step"
    plain, kept = (json.loads((Path(runs[k][0].out) / "metrics.json").read_text()) for k in runs)
    assert plain["best_step"] == kept["best_step"] == best_step
    assert kept["val_loss"] == pytest.approx(vals[best_step]) and plain["val_loss"] == vals[40]
    assert kept["val_loss"] < plain["val_loss"]
    # the saved weights are the best step's: evaluated afresh, they give its validation loss
    for keep, want in ((True, vals[best_step]), (False, vals[40])):
        again = dataclasses.replace(runs[keep][0], init=runs[keep][0].out, out=str(tmp_path / "e"))
        assert loop.Loop(again, progress_bar=False).evaluate() == pytest.approx(want, rel=1e-5)


def test_shards_of_n_processes_make_the_one_process_batch_and_cover_each_epoch():
    one = loop.Batches(n=10, per_rank=4, world=1, rank=0, seed=3)
    two = [loop.Batches(n=10, per_rank=2, world=2, rank=r, seed=3) for r in range(2)]
    for g in range(6):
        assert one.indices(g) == two[0].indices(g) + two[1].indices(g)
    stream = [i for g in range(5) for i in one.indices(g)]  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == sorted(stream[10:]) == list(range(10))
    assert stream[:10] != stream[10:]  # each epoch has its own order


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(5.5e-4) and lr_at(110, cfg) == pytest.approx(1e-4)
    assert lr_at(500, cfg) == pytest.approx(1e-4)


def test_masked_loss_projects_only_the_scored_positions_and_matches_the_full_logits(
    corpus, tokenizer_dir
):
    """Fine-tuning's loss (logits at the response positions only) equals cross-entropy over the
    full (B, T, vocab) logits with ignored labels, in value and in every gradient."""
    tok = Tokenizer.from_dir(tokenizer_dir)
    torch.manual_seed(0)
    model = Decoder(setup.model_config(TrainConfig(**TINY), tok))
    x = torch.randint(0, tok.vocab_size, (3, 16))
    y = torch.randint(0, tok.vocab_size, (3, 16))
    y[:, :10] = data.IGNORE  # prompt positions
    y[1, 12:] = data.IGNORE  # padding
    reference = torch.nn.functional.cross_entropy(
        model(x).flatten(0, 1), y.flatten(), ignore_index=data.IGNORE
    )
    want = torch.autograd.grad(reference, list(model.parameters()))
    loss = loop.batch_loss(model, x, y)
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert model(x, select=y != data.IGNORE).shape == (
        int((y != data.IGNORE).sum()),
        tok.vocab_size,
    )
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    summed = loop.batch_loss(model, x, y, reduction="sum")
    assert summed.item() == pytest.approx(
        reference.item() * int((y != data.IGNORE).sum()), rel=1e-5
    )


def test_example_weighting_averages_each_example_before_the_batch(corpus, tokenizer_dir):
    """loss_weighting="example": a 2-token answer and a 6-token reply count the same, i.e. the
    loss is the mean over rows of each row's own masked cross-entropy; a row with no scored
    token is left out (not counted as a zero)."""
    tok = Tokenizer.from_dir(tokenizer_dir)
    torch.manual_seed(0)
    model = Decoder(setup.model_config(TrainConfig(**TINY), tok))
    x = torch.randint(0, tok.vocab_size, (3, 12))
    y = torch.full((3, 12), data.IGNORE)
    y[0, 4:6] = x[0, 5:7]  # a 2-token answer
    y[1, 2:8] = x[1, 3:9]  # a 6-token reply; row 2 has nothing scored
    rows = [
        torch.nn.functional.cross_entropy(model(x[i : i + 1])[0], y[i], ignore_index=data.IGNORE)
        for i in (0, 1)
    ]
    loss = loop.batch_loss(model, x, y, weighting="example")
    assert loss.item() == pytest.approx((rows[0] + rows[1]).item() / 2, abs=1e-5)
    token = loop.batch_loss(model, x, y)
    assert token.item() == pytest.approx((2 * rows[0] + 6 * rows[1]).item() / 8, abs=1e-5)
    with pytest.raises(TrainError, match="loss_weighting must be one of"):
        TrainConfig(loss_weighting="sentence")
    with pytest.raises(TrainError, match=r"dropout must be in \[0, 1\), got 1.5"):
        TrainConfig(dropout=1.5)


def test_weight_decay_applies_to_matrices_only(corpus, tokenizer_dir):
    tok = Tokenizer.from_dir(tokenizer_dir)
    model = Decoder(setup.model_config(TrainConfig(**TINY), tok))
    decay, plain = setup.make_optimizer(model, TrainConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decay["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_bf16_autocast_and_time_budget_stop_cleanly(corpus, tokenizer_dir, tmp_path):
    cfg = tiny(corpus, tokenizer_dir, tmp_path / "bf16", precision="bf16", max_minutes=1e-6)
    result = loop.train(cfg, progress_bar=False)
    assert result.stopped == "time budget" and result.step == 1
    assert result.val_loss is not None and torch.isfinite(torch.tensor(result.val_loss))
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert metrics["stopped"] == "time budget" and metrics["step"] == 1
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="fp16 mixed precision needs a CUDA GPU"):
            loop.train(dataclasses.replace(cfg, precision="fp16"), progress_bar=False)
