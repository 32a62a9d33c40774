"""Retrieval quality on a 47-question set over KJV chapters and Shakespeare pages: hit@5 >= 0.9,
and int8 embeddings (the default on AVX2 CPUs) within one point of fp32."""

from __future__ import annotations

import os

import pytest

from ingest import Embedder, Store, onnx_int8, retrieve
from ingest.embeddings import cpu_has_fbgemm
from tests.ingest.qa_set import corpus, score


def qa_result(embedder, path) -> dict:
    documents, questions = corpus()
    assert len(questions) >= 40
    with Store("qa", path=path, embedder=embedder) as store:
        for document in documents:
            assert store.add_document(document).added
        ranked = [[(h.source, h.page) for h in retrieve(store, q.query, k=5)] for q in questions]
    return score(ranked, questions, k=5)


@pytest.fixture(scope="module")
def fp32_result(embedder, tmp_path_factory) -> dict:
    return qa_result(embedder, tmp_path_factory.mktemp("qa-fp32"))


def test_hit_at_5_and_mrr_on_the_pypi_corpora(fp32_result, capsys, record_property):
    result = fp32_result
    record_property("retrieval", result)
    with capsys.disabled():
        print(
            f"\nretrieval: {result['questions']} questions, hit@5 {result['hit@5']:.3f}, "
            f"MRR@5 {result['mrr']:.3f}"
        )
    assert result["hit@5"] >= 0.9
    assert result["mrr"] >= 0.7


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_int8_embeddings_keep_retrieval_within_one_point(fp32_result, tmp_path, capsys, backend):
    if backend == "torch" and not cpu_has_fbgemm():
        pytest.skip("torch's int8 needs an x86-64 CPU with AVX2 (fbgemm)")
    if backend == "onnxruntime" and not onnx_int8.available():
        assert not os.environ.get("CI"), "requirements.txt installs onnx and onnxruntime"
        pytest.skip("pip install onnx onnxruntime (requirements.txt)")
    int8 = qa_result(Embedder(precision="int8", int8_backend=backend), tmp_path / "qa-int8")
    with capsys.disabled():
        print(f"\nretrieval int8 ({backend}): hit@5 {int8['hit@5']:.3f}, MRR@5 {int8['mrr']:.3f}")
    assert int8["hit@5"] >= fp32_result["hit@5"] - 0.01
    assert int8["mrr"] >= fp32_result["mrr"] - 0.01
