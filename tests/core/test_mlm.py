"""Masked-LM (core/mlm.py, core/fill_mask.py): BERT's 15% / 80-10-10 proportions on 1M tokens,
special tokens never masked, whole-word masking, the accuracy and baseline arithmetic, MLM
training through core.train with exact resume, and the demo encoder (slow)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from core.bert_weights import bert_tokenizer, load_encoder, minilm_path
from core.encoder import Encoder, EncoderConfig
from core.fill_mask import fill_mask
from core.mlm import (
    IGNORE,
    MaskedBlocks,
    Masking,
    MaskingError,
    masked_accuracy,
    train_wordpiece,
    unigram_accuracy,
)
from core.train.config import TrainConfig, TrainError
from core.train.loop import train

TEXT = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer():
    return bert_tokenizer(minilm_path())


def million_tokens(tokenizer) -> torch.Tensor:
    """1M real ids in rows of 500, each row [CLS] ... [SEP] with [SEP]s and [PAD]s inside too."""
    ids = torch.tensor(tokenizer.backend.encode(TEXT, add_special_tokens=False).ids)
    rows = ids.repeat(1_000_000 // len(ids) + 1)[:1_000_000].view(2000, 500).clone()
    rows[:, 0], rows[:, -1] = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    rows[:, 250], rows[::2, 400:] = tokenizer.token_to_id("[SEP]"), tokenizer.token_to_id("[PAD]")
    return rows


@pytest.mark.parametrize("whole_word", [False, True])
def test_proportions_on_a_million_tokens(tokenizer, whole_word):
    masking = Masking.for_tokenizer(tokenizer, whole_word=whole_word)
    ids = million_tokens(tokenizer)
    inputs, labels = masking.apply(ids, torch.Generator().manual_seed(0))
    normal = ~torch.isin(ids, masking.special_ids)
    chosen = labels != IGNORE
    assert not (chosen & ~normal).any()  # [CLS], [SEP], [PAD] are never chosen
    assert torch.equal(inputs[~normal], ids[~normal]) and torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])  # only chosen tokens change
    n = int(chosen.sum())
    as_mask = int((inputs[chosen] == masking.mask_id).sum()) / n
    as_random = int(((inputs != ids) & chosen & (inputs != masking.mask_id)).sum()) / n
    kept = int((inputs[chosen] == ids[chosen]).sum()) / n
    assert abs(n / int(normal.sum()) - 0.15) <= 0.005
    assert abs(as_mask - 0.80) <= 0.005
    # a random draw equal to the original counts as kept: both within 0.5 points of 10%
    assert abs(as_random - 0.10) <= 0.005 and abs(kept - 0.10) <= 0.005
    replaced = inputs[chosen & (inputs != ids) & (inputs != masking.mask_id)]
    assert not torch.isin(replaced, masking.special_ids).any()  # random ones are real words


def test_whole_word_masks_every_piece_of_a_chosen_word(tokenizer):
    masking = Masking.for_tokenizer(tokenizer, whole_word=True)
    ids = torch.tensor([tokenizer.encode("unbelievably extraordinary tokenization " * 400)])
    _, labels = masking.apply(ids, torch.Generator().manual_seed(1))
    chosen = (labels != IGNORE)[0]
    pieces = masking.continuation[ids[0]]
    assert pieces.any() and chosen.any()
    starts = [*torch.nonzero(~pieces).flatten().tolist(), len(pieces)]
    for a, b in itertools.pairwise(starts):  # each word wholly chosen or wholly not
        assert chosen[a:b].all() or not chosen[a:b].any()


def test_masking_refuses_a_tokenizer_without_mask():
    from core.train.data import train_tokenizer

    with pytest.raises(MaskingError, match=r"no \[MASK\] token"):
        Masking.for_tokenizer(train_tokenizer(["some text " * 50], 300))


def tiny_encoder_and_blocks(tokenizer_texts: list[str]):
    tok = train_wordpiece(tokenizer_texts, 300)
    torch.manual_seed(0)
    config = EncoderConfig.preset(
        "bert", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=32
    )
    model = Encoder(config).eval()
    stream = torch.tensor(
        tok.backend.encode(" ".join(tokenizer_texts), add_special_tokens=False).ids
    )
    cls_sep = (tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]"))
    return model, tok, stream, MaskedBlocks(stream, 32, Masking.for_tokenizer(tok), cls_sep, 0)


def test_accuracy_and_unigram_baseline_arithmetic():
    texts = ["the cat sat on the mat and the dog sat on the log " * 30]
    model, tok, stream, blocks = tiny_encoder_and_blocks(texts)
    x, _ = blocks[0]
    assert torch.equal(blocks[0][0], x) and x[0] == tok.token_to_id("[CLS]")  # fixed val masks
    labels = torch.cat([blocks[i][1] for i in range(len(blocks))])
    labels = labels[labels != IGNORE]
    the = tok.token_to_id("the")
    assert unigram_accuracy(stream, blocks) == pytest.approx(float((labels == the).float().mean()))
    with torch.no_grad():  # an encoder whose head always says "the" scores exactly the baseline
        model.head.bias.fill_(-1e4)
        model.head.bias[the] = 1e4
    assert masked_accuracy(model, blocks) == pytest.approx(unigram_accuracy(stream, blocks))
    with torch.no_grad():
        model.head.bias[the] = -1e4
        model.head.bias[tok.token_to_id("cat")] = 1e4
    assert masked_accuracy(model, blocks) == pytest.approx(
        float((labels == tok.token_to_id("cat")).float().mean())
    )


def test_fill_mask_returns_top_k_probabilities_per_mask():
    model, tok, _, _ = tiny_encoder_and_blocks(["the cat sat on the mat " * 30])
    top = fill_mask(model, tok, "the [MASK] sat on the [MASK]", k=3)
    assert len(top) == 2 and all(len(row) == 3 for row in top)
    probs = [p for _, p in top[0]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    assert not {t for row in top for t, _ in row} & {"[MASK]", "[CLS]", "[SEP]", "[PAD]"}
    with pytest.raises(MaskingError, match="write \\[MASK\\]"):
        fill_mask(model, tok, "no blank here")
    with pytest.raises(MaskingError, match="at most 32"):
        fill_mask(model, tok, "[MASK] " + "cat " * 40)


def mlm_config(tmp_path: Path, corpus: Path, **over) -> TrainConfig:
    shape = dict(vocab_size=400, n_layer=1, n_head=2, n_embd=32, block_size=32, batch_size=4)
    steps = dict(max_steps=6, warmup_steps=2, eval_every=3, eval_steps=2, save_every=3, lr=1e-3)
    where = dict(data=[str(corpus)], out=str(tmp_path / "run"), val_fraction=0.2)
    return TrainConfig(**{"mode": "mlm", "arch": "bert", **shape, **steps, **where, **over})


def test_mlm_trains_through_core_train_and_resumes_exactly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT[:20000], encoding="utf-8")
    # one tokenizer for both runs: WordPiece training breaks frequency ties differently each time
    train_wordpiece([TEXT[:20000]], 400).save(tmp_path / "tok")
    run = {"tokenizer": str(tmp_path / "tok")}
    whole = train(mlm_config(tmp_path / "a", corpus, **run), progress_bar=False)
    first = train(mlm_config(tmp_path / "b", corpus, **run), progress_bar=False, stop_at=3)
    again = mlm_config(tmp_path / "b", corpus, resume=str(tmp_path / "b" / "run"), **run)
    resumed = train(again, progress_bar=False)
    assert whole.step == resumed.step == 6
    assert whole.losses == first.losses + resumed.losses
    a, _ = load_encoder(tmp_path / "a" / "run")
    b, tok = load_encoder(tmp_path / "b" / "run")
    assert all(
        torch.equal(p, q)
        for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    assert tok.token_to_id("[MASK]") is not None and a.config.post_norm


def test_mlm_settings_are_checked(tmp_path):
    with pytest.raises(TrainError, match="mlm needs an arch in"):
        mlm_config(tmp_path, tmp_path, arch="classic")
    with pytest.raises(TrainError, match="mlm_probability"):
        mlm_config(tmp_path, tmp_path, mlm_probability=1.5)


@pytest.mark.slow
def test_demo_encoder_beats_the_unigram_baseline_three_times(tmp_path):
    """`make mlm-demo`'s recipe, time-capped: held-out masked-token accuracy >= 3x unigram."""
    from recipes.mlm import MLMDemo, run

    results = run(MLMDemo(data=str(tmp_path / "data"), models=str(tmp_path / "models")))
    assert results["masked_accuracy"] >= 3 * results["unigram_accuracy"]
    saved = json.loads((tmp_path / "data" / "results" / "mlm-demo.json").read_text())
    assert saved["fill_mask"] and saved["steps"] > 0


def test_mlm_trains_in_bf16_with_whole_words_and_rope(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT[:20000], encoding="utf-8")
    cfg = mlm_config(tmp_path, corpus, precision="bf16", whole_word=True, arch="bert_rope")
    result = train(cfg, progress_bar=False)
    assert result.step == 6 and all(0 < loss < 10 for loss in result.losses)
    assert result.val_loss is not None and result.val_loss < 10
    model, tokenizer = load_encoder(result.out)  # rotary tables rebuilt, not left on meta
    assert not model.config.post_norm and model.config.position == "rope"
    assert len(fill_mask(model, tokenizer, "the [MASK] of the model", k=2)[0]) == 2
