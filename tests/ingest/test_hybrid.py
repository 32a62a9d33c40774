"""Hybrid search: fusion order, one hit per page, why it ranked, rerankers, the keyword index's
life on both backends (restart, delete, missing or stale files), and queries that cannot be run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ingest import (
    MODES,
    CrossEncoderReranker,
    QueryError,
    Store,
    get_reranker,
    register_reranker,
    retrieve,
    tokenize,
)
from ingest.keyword_index import FORMAT
from ingest.rerank import CoverageReranker, reranker_names, sentence_bags

QUERY = "How do I change the zorbulate depth of the renderer?"
DOCS = {
    # the meaning without the name: what dense search finds
    "meaning.txt": "The renderer draws each scene; how deeply it recurses into nested scenes "
    "can be changed in the renderer's configuration file.",
    # the rare name without the meaning: what keyword search finds
    "name.txt": "Zorbulate, zorbulate: the word appears twice here. Apples grow in orchards and "
    "the harvest starts in the autumn.",
    # both: what hybrid search should put first
    "both.txt": "Set the zorbulate depth of the renderer with --zorbulate-depth N; a deeper "
    "setting recurses further into nested scenes.",
    "noise.txt": "The tax office closes early on Fridays in the summer months.",
}


@pytest.fixture
def hand_made(make_store) -> Store:
    store = make_store()
    for name, text in DOCS.items():
        store.add_file(text.encode(), name=name)
    return store


def test_fusion_orders_by_the_weighted_sum_and_keeps_why(hand_made):
    dense = retrieve(hand_made, QUERY, k=4, mode="dense")
    keyword = retrieve(hand_made, QUERY, k=4, mode="keyword")
    hybrid = retrieve(hand_made, QUERY, k=4, mode="hybrid")
    assert dense[0].source != "name.txt" and keyword[0].source != "meaning.txt"
    assert "noise.txt" not in {h.source for h in keyword}  # shares no word with the query
    assert hybrid[0].source == "both.txt"
    # each list is sorted by its own score, and the hybrid score is the documented sum
    assert [h.why.dense_score for h in dense] == sorted((h.score for h in dense), reverse=True)
    assert [h.why.keyword_rank for h in keyword] == [1, 2, 3][: len(keyword)]
    top_bm25 = max(h.why.keyword_score for h in hybrid)
    for hit in hybrid:
        assert hit.why.fused_score == pytest.approx(hit.score + hit.why.keyword_score / top_bm25)
        assert hit.why.final_score == hit.why.fused_score and hit.why.rerank_score is None
    finals = [h.why.final_score for h in hybrid]
    assert finals == sorted(finals, reverse=True)
    # the name-only chunk is found by keyword alone: hybrid lifts it above the unrelated one
    order = [h.source for h in hybrid]
    assert order.index("name.txt") < order.index("noise.txt")
    name = next(h for h in hybrid if h.source == "name.txt")
    assert name.why.keyword_rank is not None and name.why.dense_rank is not None  # both lists
    assert "keyword #" in name.why.describe() and "(hybrid)" in name.why.describe()


def test_rerank_adds_the_rerankers_weighted_score(hand_made):
    hits = retrieve(hand_made, QUERY, k=4, mode="hybrid+rerank")
    assert hits[0].source == "both.txt"
    weight = get_reranker("coverage").weight
    for hit in hits:
        why = hit.why
        assert why.reranker == "coverage" and 0.0 <= why.rerank_score <= 1.0
        assert why.final_score == pytest.approx(why.fused_score + weight * why.rerank_score)
    assert [h.why.final_score for h in hits] == sorted(
        (h.why.final_score for h in hits), reverse=True
    )


def test_a_registered_reranker_decides_and_unknown_ones_are_named(hand_made):
    class Shortest:
        """Prefers short passages: a real, if odd, reranker that overrides the fused order."""

        name, weight = "shortest", 100.0

        def score(self, query: str, texts: list[str]) -> np.ndarray:
            return -np.array([len(t) for t in texts], dtype=float)

    register_reranker("shortest", lambda **_: Shortest())
    assert "shortest" in reranker_names()
    hits = retrieve(hand_made, QUERY, k=4, mode="hybrid+rerank", reranker="shortest")
    lengths = [len(h.text) for h in hits]
    assert lengths == sorted(lengths) and hits[0].why.reranker == "shortest"
    with pytest.raises(ValueError, match="coverage"):
        retrieve(hand_made, QUERY, mode="hybrid+rerank", reranker="no-such-reranker")
    with pytest.raises(ValueError, match="SCRATCHGPT_CROSS_ENCODER"):
        CrossEncoderReranker("/nonexistent/model")


def test_one_hit_per_page(make_store):
    store = make_store()
    # page 1 is long, so several overlapping chunks of it match; page 2 matches once
    page = " ".join(f"Lighthouse keepers log lamp number {i} every night." for i in range(120))
    pages = [page, "A lighthouse keeper logs the lamp.", "Bread recipes."]
    store.add_file("\f".join(pages).encode(), name="l.txt")  # a form feed starts a page
    assert store.count() >= 4
    for mode in MODES:
        hits = retrieve(store, "lighthouse keeper lamp log", k=3, mode=mode)
        pages = [(h.source, h.page) for h in hits]
        assert len(pages) == len(set(pages)), (mode, pages)
        assert {1, 2} <= {h.page for h in hits}, mode


def test_keyword_index_survives_restart_delete_and_missing_or_stale_files(
    make_store, backend, embedder
):
    store = make_store()
    store.add_file(DOCS["name.txt"].encode(), name="name.txt")
    store.add_file(DOCS["both.txt"].encode(), name="both.txt")
    owner, directory = store.owner, store.keyword.directory
    assert store.keyword.count() == store.count() and any(directory.glob("*.json"))
    store.close()

    def reopen() -> Store:
        return Store(owner, embedder=embedder, **backend)

    def keyword_sources(s: Store) -> set[str]:
        return {h.source for h in retrieve(s, "zorbulate", k=5, mode="keyword")}

    with reopen() as again:  # restart: read from its files
        assert keyword_sources(again) == {"name.txt", "both.txt"}
        assert again.delete("name.txt") == 1
        assert keyword_sources(again) == {"both.txt"}
    shutil.rmtree(directory)  # missing: rebuilt from Chroma, not searched empty
    with reopen() as again:
        assert keyword_sources(again) == {"both.txt"} and again.keyword.count() == again.count()
        stale = next(directory.glob("*.json"))
    ghost = json.loads(stale.read_text())  # stale: a document Chroma no longer has
    ghost["ids"] = ["ghost-1"]
    (directory / ("0" * 64 + ".json")).write_text(json.dumps(ghost))
    (directory / "corrupt.json").write_text("{not json")
    with reopen() as again:
        assert again.keyword.count() == again.count() == 1
        assert keyword_sources(again) == {"both.txt"}


def test_sentence_bags_are_kept_with_the_index_and_read_after_restart(
    make_store, backend, embedder
):
    """The coverage reranker's sentence bags are computed once, when a chunk is indexed, and read
    back after a restart: a query tokenizes no candidate, and scores as with fresh bags. An index
    file of the format before (no bags) is rebuilt from Chroma on open."""
    store = make_store()
    for name, text in DOCS.items():
        store.add_file(text.encode(), name=name)
    owner, directory = store.owner, store.keyword.directory
    store.close()
    sentence_bags.cache_clear()
    with Store(owner, embedder=embedder, **backend) as again:
        got = again.collection.get(include=["documents"])
        fresh = {cid: sentence_bags(t) for cid, t in zip(got["ids"], got["documents"], strict=True)}
        assert again.keyword.bags(got["ids"]) == fresh
        sentence_bags.cache_clear()
        hits = retrieve(again, QUERY, k=4)
        assert sentence_bags.cache_info().misses == 0  # no candidate tokenized at query time
    want = CoverageReranker().score(QUERY, [h.text for h in hits])
    assert [h.why.rerank_score for h in hits] == pytest.approx(want.tolist())
    for path in directory.glob("*.json"):  # as an index written before bags were kept
        doc = json.loads(path.read_text())
        del doc["bags"]
        path.write_text(json.dumps(doc | {"format": FORMAT - 1}))
    with Store(owner, embedder=embedder, **backend) as again:
        assert again.keyword.bags(got["ids"]) == fresh and again.keyword.count() == len(fresh)


def test_another_writer_behind_the_index_is_noticed_on_search(make_store):
    store = make_store()
    store.add_file(DOCS["both.txt"].encode(), name="both.txt")
    # as another replica would: a row written to Chroma directly, the index not told
    vector = store.embedder.encode(["zorbulate orchard"])
    meta = {"source": "other.txt", "doc_hash": "d" * 64, "page": 1, "start": 0, "end": 17}
    store.collection.add(
        ids=["other-1"], embeddings=vector, documents=["zorbulate orchard"], metadatas=[meta]
    )
    assert {h.source for h in retrieve(store, "orchard", k=5, mode="keyword")} == {"other.txt"}


def test_queries_that_cannot_be_searched_say_why(hand_made):
    for query, message in [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("x" * 100_000, "100000 characters"),
        ("?!... --- ;;; !!!", "no letters or digits"),
    ]:
        with pytest.raises(QueryError, match=message):
            retrieve(hand_made, query, k=3)


def test_other_scripts_are_searched_not_refused(hand_made):
    hand_made.add_file("Маяк стоит на скале у входа в гавань.".encode(), name="ru.txt")
    hand_made.add_file("灯塔守护者每晚点亮灯塔。".encode(), name="zh.txt")
    assert tokenize("灯塔守护者") == ["灯", "塔", "守", "护", "者"]  # CJK: one word a character
    assert retrieve(hand_made, "Где стоит маяк?", k=1, mode="keyword")[0].source == "ru.txt"
    assert retrieve(hand_made, "灯塔", k=1, mode="keyword")[0].source == "zh.txt"
    for mode in MODES:  # every mode answers, whatever the embedder makes of the script
        assert retrieve(hand_made, "灯塔在哪里？", k=2, mode=mode)
