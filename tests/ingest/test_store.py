"""Store and retrieval on both backends (embedded PersistentClient, a real `chroma run` server)."""

from __future__ import annotations

import pytest

from ingest import (
    DocumentNotFoundError,
    EmbedderMismatchError,
    IngestError,
    QueryError,
    Store,
    chunk_document,
    load_document,
    retrieve,
)
from ingest.journal import NAME as JOURNAL
from tests.ingest.helpers import bad_inputs, snapshot
from tests.ingest.pdfs import text_pdf

FILLER = (
    "The committee met again to review the quarterly figures and agreed to continue the "
    "programme without changes. Minutes were approved and circulated to all members. "
)
UNIQUE = {
    1: "The lighthouse keeper painted the spiral staircase bright orange in March.",
    2: "Our sourdough starter doubled in size after feeding it rye flour overnight.",
    3: "A rare comet will be visible above the southern horizon next Tuesday evening.",
    4: "The chess club adopted the Sicilian Defence as its official opening.",
}


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def report_pdf() -> bytes:
    return text_pdf([FILLER * 2 + UNIQUE[n] + " " + FILLER for n in sorted(UNIQUE)])


@pytest.fixture(scope="module")
def cases():
    return bad_inputs()


def test_pdf_chunks_carry_pages_and_unique_sentences_retrieve_their_page(make_store, report_pdf):
    store = make_store()
    result = store.add_file(report_pdf, name="report.pdf")
    assert result.added and result.n_pages == 4 and result.n_chunks >= 4
    chunks = snapshot(store)
    assert {meta["page"] for _, meta in chunks.values()} == {1, 2, 3, 4}
    found = {
        page: meta["page"]
        for text, meta in chunks.values()
        for page, sentence in UNIQUE.items()
        if sentence in _flat(text)  # PDF text wraps lines mid-sentence
    }
    assert found == {1: 1, 2: 2, 3: 3, 4: 4}
    for page, sentence in UNIQUE.items():
        hits = retrieve(store, sentence, k=3)
        assert hits[0].page == page and hits[0].source == "report.pdf"
        assert sentence in _flat(hits[0].text) and hits[0].score > hits[1].score


def test_bad_inputs_raise_typed_errors_and_leave_the_store_as_it_was(make_store, cases, report_pdf):
    store = make_store()
    store.add_file(report_pdf, name="report.pdf")
    for name, data, expected in cases:
        before = snapshot(store)
        if expected is not None:
            with pytest.raises(expected):
                store.add_file(data, name=name)
            assert snapshot(store) == before, name
            continue
        result = store.add_file(data, name=name)
        after = snapshot(store)
        new = {cid: v for cid, v in after.items() if cid not in before}
        assert {k: after[k] for k in before} == before  # nothing else touched
        assert new and all(meta["doc_hash"] == result.doc_hash for _, meta in new.values())
    sources = {d.source for d in store.list_documents()}
    assert sources == {"report.pdf", "nul.txt", "latin.txt", "x.pdf"}


def test_readding_same_content_is_a_noop_that_says_so(make_store, report_pdf):
    store = make_store()
    first = store.add_file(report_pdf, name="report.pdf")
    before = snapshot(store)
    again = store.add_file(report_pdf, name="copy-of-report.pdf")
    assert not again.added and again.n_chunks == 0
    assert "already indexed" in again.message and "report.pdf" in again.message
    assert snapshot(store) == before and again.doc_hash == first.doc_hash


def test_list_and_delete(make_store, report_pdf):
    store = make_store()
    store.add_file(report_pdf, name="report.pdf")
    notes = store.add_file(b"Tide tables for the bay.\fStorm warnings for May.", name="notes.txt")
    listed = {d.source: d for d in store.list_documents()}
    assert listed["notes.txt"].n_pages == 2 and listed["notes.txt"].n_chunks == notes.n_chunks
    assert listed["report.pdf"].n_pages == 4
    assert store.delete("report.pdf") == listed["report.pdf"].n_chunks
    assert [d.source for d in store.list_documents()] == ["notes.txt"]
    assert all(h.source == "notes.txt" for h in retrieve(store, UNIQUE[3], k=5))
    assert store.delete(notes.doc_hash[:12]) == notes.n_chunks and store.count() == 0
    with pytest.raises(DocumentNotFoundError, match="ingest list"):
        store.delete("report.pdf")


def test_owners_never_see_each_others_documents(make_store, report_pdf):
    alice, bob = make_store("alice"), make_store("bob")
    alice.add_file(report_pdf, name="alice-report.pdf")
    bob.add_file(b"Bob's shopping list: apples, flour, candles.", name="bob.txt")
    assert [d.source for d in alice.list_documents()] == ["alice-report.pdf"]
    assert [d.source for d in bob.list_documents()] == ["bob.txt"]
    assert all(h.source == "bob.txt" for h in retrieve(bob, UNIQUE[1], k=10))
    # The same file in two owners' collections is two independent copies.
    assert bob.add_file(report_pdf, name="alice-report.pdf").added
    bob.delete("alice-report.pdf")
    assert alice.list_documents()[0].n_chunks > 0


def test_a_collection_from_another_embedder_is_refused(make_store, backend, embedder):
    store = make_store()
    store.add_file(b"Indexed long ago with some other model.", name="old.txt")
    meta = dict(store.collection.metadata)
    store.collection.modify(metadata={**meta, "embedder": "bge-base-en", "dimension": 768})
    owner = store.owner
    store.close()
    with pytest.raises(EmbedderMismatchError, match="re-index") as info:
        Store(owner, embedder=embedder, **backend)
    assert "bge-base-en" in str(info.value) and "768" in str(info.value)
    with Store(owner, embedder=embedder, recreate=True, **backend) as fresh:
        assert fresh.count() == 0 and fresh.collection.metadata["dimension"] == embedder.dimension


def test_a_failure_midway_removes_the_partial_document(make_store, report_pdf):
    store = make_store()
    store.add_file(b"Something already here.", name="keep.txt")
    before = snapshot(store)
    store.write_batch = 2
    store.max_batch = 3  # as if the server allowed only small batches
    written = []

    def fail_after_first_batch(done: int, total: int) -> None:
        written.append(done)
        assert total > 2
        raise KeyboardInterrupt  # the user cancels the upload

    with pytest.raises(KeyboardInterrupt):
        store.add_file(report_pdf, name="report.pdf", progress=fail_after_first_batch)
    assert written == [2]
    assert snapshot(store) == before
    journal = store.client.get_collection(JOURNAL, embedding_function=None)
    assert journal.get(where={"collection": store.collection.name})["ids"] == []
    # Small batches still add the whole document.
    result = store.add_file(report_pdf, name="report.pdf")
    doc = load_document(report_pdf, name="report.pdf")
    assert result.n_chunks == len(chunk_document(doc)) == store.count() - len(before)


def test_retrieve_threshold_mmr_and_arguments(make_store):
    store = make_store()
    dup = "Penguins huddle together through the Antarctic winter to keep warm."
    store.add_file(dup.encode(), name="a.txt")
    store.add_file((dup + " ").encode(), name="b.txt")
    store.add_file(b"Emperor penguins can dive deeper than five hundred metres.", name="c.txt")
    store.add_file(b"The tax office closes early on Fridays in summer.", name="tax.txt")
    query = "How do penguins survive the cold winter?"
    plain = retrieve(store, query, k=2)
    assert {h.source for h in plain} == {"a.txt", "b.txt"}
    diverse = retrieve(store, query, k=2, mmr=True, mmr_lambda=0.6)
    assert diverse[0].source in {"a.txt", "b.txt"} and diverse[1].source == "c.txt"
    strict = retrieve(store, query, k=4, min_score=0.5)
    assert strict and all(h.score >= 0.5 for h in strict)
    assert "tax.txt" not in {h.source for h in strict}
    assert [h.score for h in plain] == sorted((h.score for h in plain), reverse=True)
    with pytest.raises(QueryError, match="empty"):  # said, not answered with nothing
        retrieve(store, "   ", k=3)
    with pytest.raises(ValueError):
        retrieve(store, query, k=0)


def test_errors_are_ingest_errors():
    for name in ("StoreLockedError", "StoreUnavailableError", "EmbedderMismatchError"):
        assert issubclass(getattr(__import__("ingest"), name), IngestError)


def test_a_double_submitted_upload_is_added_once(make_store, report_pdf):
    from concurrent.futures import ThreadPoolExecutor

    store = make_store()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: store.add_file(report_pdf, name=n), ["a.pdf", "b.pdf"]))
    assert sorted(r.added for r in results) == [False, True]
    assert store.count() == max(r.n_chunks for r in results)


def test_an_embedded_store_keeps_its_count_between_its_own_writes(tmp_path, embedder):
    """A query needs the count; embedded (the process holds the lock) Chroma is asked once per
    change, and every write (add, a failed add, delete, drop) makes the next count ask again."""
    with Store("counted", path=tmp_path / "store", embedder=embedder) as store:
        asked = []
        real = store.collection.count
        store.collection.count = lambda: asked.append(1) or real()
        store.add_file(b"Tide tables for the bay.\fStorm warnings for May.", name="a.txt")
        assert store.count() == store.count() == 2 and len(asked) == 1
        store.add_file(b"Harbour dues are paid at the office.", name="b.txt")
        assert store.count() == 3 and len(asked) == 2
        with store._writing():  # a count taken during a write is not kept
            assert store.count() == 3
        assert store.count() == 3 and len(asked) == 4

        def fail(done: int, total: int) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            store.add_file(b"Never kept. " * 40, name="c.txt", progress=fail)
        assert store.count() == 3 and len(asked) == 5
        store.delete("a.txt")
        assert store.count() == 1 and len(asked) == 6
        hits = retrieve(store, "Where are harbour dues paid?", k=3)
        assert [h.source for h in hits] == ["b.txt"] and len(asked) == 6  # from memory
        store.drop()
        assert store.count() == 0
