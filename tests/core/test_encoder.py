"""The encoder (core/encoder.py, core/bert_weights.py, core/sentence.py): logit parity with a tiny
random `BertForMaskedLM` with padding in the batch, all-MiniLM-L6-v2 sentence embeddings against
sentence-transformers, padding and bidirectionality, load errors, the CLI, retrieval via ingest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.bert_weights import WeightsError, encode_batch, load_encoder, minilm_path
from core.encoder import Encoder, EncoderConfig
from core.sentence import SentenceEncoder

transformers = pytest.importorskip("transformers")


def tiny_bert(tmp_path, masked_lm: bool = True):
    """A random BERT with non-trivial norms and biases, saved as a Hugging Face dir."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=211,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    model = transformers.BertForMaskedLM(cfg) if masked_lm else transformers.BertModel(cfg, False)
    with torch.no_grad():  # fresh norms are ones and biases zeros: parity must not hinge on that
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.normal_(0, 0.3)
    model.eval().save_pretrained(tmp_path)
    return model


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 211, (3, 24), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 15:], mask[2, 4:] = 0, 0  # rows of 24, 15 and 4 real tokens
    ids[mask == 0] = 0
    segments = torch.zeros_like(ids)
    segments[0, 12:] = 1  # a sentence pair in row 0
    return ids, mask, segments


def test_mlm_logits_match_transformers_with_padding(tmp_path):
    reference = tiny_bert(tmp_path)
    ours, _ = load_encoder(tmp_path)
    ids, mask, segments = padded_batch()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask, token_type_ids=segments).logits
        got = ours(ids, mask, segments)
    assert got.shape == want.shape == (3, 24, 211)
    assert (got - want).abs().max().item() <= 1e-4


def test_bert_model_checkpoint_loads_without_a_head(tmp_path):
    reference = tiny_bert(tmp_path, masked_lm=False)
    ours, _ = load_encoder(tmp_path)
    assert ours.head is None
    ids, mask, _ = padded_batch()
    with torch.no_grad():
        want = reference(input_ids=ids, attention_mask=mask).last_hidden_state
        assert (ours.hidden(ids, mask) - want).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="without an MLM head"):
        ours(ids, mask)


@pytest.mark.parametrize("preset", ["bert", "bert_preln", "bert_rope"])
def test_padding_changes_nothing_and_every_token_sees_both_sides(preset):
    torch.manual_seed(0)
    config = EncoderConfig.preset(preset, vocab_size=100, n_layer=2, n_head=2, n_embd=32)
    model = Encoder(config).eval()
    ids = torch.randint(5, 100, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = (torch.arange(16) < 10).long()[None]
    with torch.no_grad():
        alone = model(ids)
        assert torch.allclose(model(padded, mask)[:, :10], alone, atol=1e-5)
        changed = ids.clone()
        changed[0, -1] = (changed[0, -1] + 1) % 100
        assert not torch.allclose(model(changed)[0, 0], alone[0, 0])  # the first sees the last


@pytest.mark.parametrize("n", [12, pytest.param(100, marks=pytest.mark.slow)])
def test_minilm_matches_sentence_transformers(n):
    from sentence_transformers import SentenceTransformer

    topics = ["the river bank", "a savings account", "Hamlet's father", "quantum tunnelling"]
    forms = [
        "{}",
        "What do you know about {}?",
        "Tell me, in detail, everything that is known about {} and why it matters.",
        "{}!!! ... ÜBER naïve café: {} — 東京 🚀",
        "Notes: " + "{} and more, " * 40,  # past 256 tokens: truncated the same way
    ]
    sentences = [f.replace("{}", t) for t in topics for f in forms]
    sentences += [f"Sentence {i}: {topics[i % 4]} on page {i * 7}." for i in range(80)]
    assert len(sentences) == 100
    sentences = sentences[:: 100 // n][:n]  # the fast run: long, truncated and short ones alike
    ours = SentenceEncoder()
    library = SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    want = library.encode(sentences, batch_size=32, normalize_embeddings=True)
    got = ours.encode(sentences)
    cosine = (got * want).sum(1)
    assert got.shape == (n, 384) and cosine.min() >= 0.9999
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert ours.name() == "all-MiniLM-L6-v2" and ours.dimension == 384 and ours.max_tokens == 256
    assert len(ours(["a document"])[0]) == 384  # Chroma's EmbeddingFunction protocol


def test_truncation_keeps_cls_and_sep():
    tokenizer = load_encoder(minilm_path())[1]
    ids, mask = encode_batch(tokenizer, ["word " * 300, "short"], max_len=256)
    assert ids.shape == (2, 256) and mask[1].sum() == 3  # [CLS] short [SEP], then padding
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert ids[0, 0] == cls and ids[0, -1] == sep and ids[1, 2] == sep and ids[1, 3] == 0


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(WeightsError, match="no config.json"):
        load_encoder(tmp_path)
    tiny_bert(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(WeightsError, match="encoder.layer.3"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(WeightsError, match="not a BERT encoder"):
        load_encoder(tmp_path)


def test_cli_embed_and_word_table(capsys):
    from core.__main__ import main

    assert main(["embed", "hello world", "goodbye"]) == 0
    lines = capsys.readouterr().out.splitlines()
    vectors = np.array([json.loads(line) for line in lines])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    river = ["He sat on the river bank.", "Fish swam by the bank of the stream."]
    money = ["The bank lent me money.", "She paid the cheque into her bank account."]
    assert main(["embed", "--word", "bank", *river, *money]) == 0
    rows = [line.split()[:4] for line in capsys.readouterr().out.splitlines()[1:]]
    table = np.array(rows, dtype=float)
    assert table[0, 1] > max(table[0, 2], table[0, 3])  # river bank is nearer river bank
    assert table[2, 3] > max(table[2, 0], table[2, 1])  # money bank nearer money bank


def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path):
    from core.__main__ import main

    assert main(["embed", "--word", "bank", "no such word here"]) == 2
    assert "does not contain the word 'bank'" in capsys.readouterr().err
    assert main(["fill-mask", "To be [MASK]", "--model", str(tmp_path / "missing")]) == 2
    assert "no such encoder directory" in capsys.readouterr().err
    assert main(["fill-mask", "To be", "--model", str(minilm_path())]) == 2  # no MLM head
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.slow
def test_retrieval_with_our_encoder_equals_the_library(tmp_path, capsys):
    """hit@5 on the KJV + Shakespeare set: our encoder loading MiniLM vs the library path."""
    from ingest import Embedder, Store, retrieve
    from tests.ingest.qa_set import corpus, score

    documents, questions = corpus()
    results = {}
    for name, embedder in (("library", Embedder(precision="fp32")), ("ours", SentenceEncoder())):
        with Store("qa", path=tmp_path / name, embedder=embedder) as store:
            for document in documents:
                store.add_document(document)
            ranked = [
                [(h.source, h.page) for h in retrieve(store, q.query, k=5)] for q in questions
            ]
        results[name] = score(ranked, questions, k=5)
    with capsys.disabled():
        print(f"\nKJV + Shakespeare, {len(questions)} questions: {results}")
    assert results["ours"]["hit@5"] == results["library"]["hit@5"] >= 0.9
