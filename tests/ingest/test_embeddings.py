"""The embedder: our batched encode equals sentence-transformers'; precision choices."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import torch

from ingest import Embedder, onnx_int8
from ingest.embeddings import cpu_has_fbgemm, cpu_has_native_bf16

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "To be, or not to be, that is the question:",
    "x",
    "Now is the winter of our discontent made glorious summer by this sun of York; " * 6,
    "Café crème, naïve façade — ünïcödé 🥐.",
    "And the earth was without form, and void; and darkness was upon the face of the deep.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him.",
]


def test_encode_equals_sentence_transformers_in_order(embedder):
    want = embedder.model.encode(TEXTS, batch_size=64, normalize_embeddings=True)
    threads = torch.get_num_threads()
    for batch_size, workers in [(2, 2), (3, 1), (64, None)]:
        ours = Embedder.__new__(Embedder)
        ours.__dict__.update(embedder.__dict__, batch_size=batch_size, workers=workers)
        got = ours.encode(TEXTS)
        assert got.shape == (len(TEXTS), embedder.dimension) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert torch.get_num_threads() == threads  # worker threads never change the caller's
    assert embedder.encode([]).shape == (0, embedder.dimension)


def test_bf16_rounds_the_weights_once_to_the_same_vectors():
    """bf16 keeps its Linear weights in bf16 (autocast rounded them on every call): the same
    vectors as autocast over the fp32 weights, bit for bit; LayerNorm and embeddings stay fp32."""
    from sentence_transformers import SentenceTransformer

    ours = Embedder(precision="bf16")
    modules = [m for m in ours.model.modules() if hasattr(m, "weight")]
    dtypes = {type(m).__name__: m.weight.dtype for m in modules}
    assert dtypes["Linear"] == torch.bfloat16 and dtypes["LayerNorm"] == torch.float32
    autocast = Embedder.__new__(Embedder)
    fp32 = SentenceTransformer(ours.model_path, device="cpu", local_files_only=True).eval()
    autocast.__dict__.update(ours.__dict__, model=fp32)
    np.testing.assert_array_equal(ours.encode(TEXTS), autocast.encode(TEXTS))


def test_embedding_leaves_later_threads_their_torch_threads(embedder):
    """The embedding workers run torch on one thread each, and only they do: threads started
    after (where the app decodes) keep the process's count, not one."""
    if torch.get_num_threads() < 2:
        pytest.skip("one torch thread here: nothing to tell apart")
    seen: list[int] = []
    ours = Embedder.__new__(Embedder)
    ours.__dict__.update(embedder.__dict__, batch_size=2, workers=2)
    embed = ours._embed
    ours._embed = lambda features: seen.append(torch.get_num_threads()) or embed(features)
    ours.encode(TEXTS)
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert set(seen) == {1} and later == [torch.get_num_threads()]


def _int8_required(backend: str) -> None:
    if backend == "torch" and not cpu_has_fbgemm():
        pytest.skip("torch's int8 needs an x86-64 CPU with AVX2 (fbgemm)")
    if backend == "onnxruntime" and not onnx_int8.available():
        assert not os.environ.get("CI"), "requirements.txt installs onnx and onnxruntime"
        pytest.skip("pip install onnx onnxruntime (requirements.txt)")


def test_auto_precision_is_int8_on_avx2_cpus_without_native_bf16():
    _int8_required("torch")
    if cpu_has_native_bf16():
        pytest.skip("this CPU has native bf16: auto picks bf16 autocast")
    embedder = Embedder()
    assert embedder.precision == "int8" and embedder.batch_size == 1
    assert embedder.backend == ("onnxruntime" if onnx_int8.available() else "torch")
    assert Embedder(precision="int8", batch_size=8).batch_size == 8  # an explicit size is kept
    assert Embedder(precision="fp32").batch_size == 32


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_int8_vector_of_a_text_does_not_depend_on_its_batch_mates(backend):
    _int8_required(backend)
    int8 = Embedder(precision="int8", int8_backend=backend)
    assert int8.backend == backend
    alone = np.stack([int8.encode([t])[0] for t in TEXTS])
    np.testing.assert_array_equal(int8.encode(TEXTS), alone)
    rebuilt = Embedder.build_from_config(int8.get_config())  # as Chroma rebuilds it
    assert rebuilt.backend == backend
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), alone)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_int8_vectors_stay_close_to_fp32(embedder, backend):
    _int8_required(backend)
    int8 = Embedder(precision="int8", int8_backend=backend)
    cosine = (int8.encode(TEXTS) * embedder.encode(TEXTS)).sum(axis=1)
    # int8 moves short texts most ("x": ~0.91); retrieval: tests/ingest/test_retrieval_quality.py
    assert cosine.min() > 0.85 and cosine.mean() > 0.95, cosine


def test_onnx_export_is_cached_once_and_rebuilt_when_missing(tmp_path, monkeypatch):
    _int8_required("onnxruntime")
    monkeypatch.setenv("SCRATCHGPT_CACHE", str(tmp_path))
    first = Embedder(precision="int8", int8_backend="onnxruntime")
    (cached,) = (tmp_path / "embeddings").glob("*.onnx")
    stamp = cached.stat().st_mtime_ns
    vectors = first.encode(TEXTS)
    again = Embedder(precision="int8", int8_backend="onnxruntime")  # reuses the file
    assert cached.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.encode(TEXTS), vectors)
    cached.unlink()
    rebuilt = Embedder(precision="int8", int8_backend="onnxruntime")
    np.testing.assert_array_equal(rebuilt.encode(TEXTS), vectors)
    assert [p.name for p in (tmp_path / "embeddings").iterdir()] == [cached.name]  # no temp left


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="auto, fp32, bf16 or int8"):
        Embedder(precision="fp8")
    with pytest.raises(ValueError, match="auto, onnxruntime or torch"):
        Embedder(precision="int8", int8_backend="tflite")
