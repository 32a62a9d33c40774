"""Journal recovery touches only adds whose writer is gone: opening a store (a new visitor's page
load) during an upload leaves that upload whole; a dead process's add is still rolled back."""

from __future__ import annotations

import threading
import time

from ingest import Store, chunk_document, load_document
from ingest.journal import STALE_S, WRITER, Journal

DOC = "\n\n".join(
    f"Section {i}. The pump number {i} is primed with valve {i % 7} open and gauge {i % 5} "
    f"reading {i * 3} psi before the motor starts; log the reading in column {i % 4}. " * 8
    for i in range(1, 25)
).encode()


def _add_paused_midway(store: Store, opened: threading.Event, resume: threading.Event):
    """Start adding DOC on a thread that stops after its first written batch until `resume`."""
    result: dict = {}

    def progress(done: int, total: int) -> None:
        if not opened.is_set():
            opened.set()
            assert resume.wait(60)

    def run() -> None:
        result["add"] = store.add_file(DOC, name="manual.txt", progress=progress)

    thread = threading.Thread(target=run)
    thread.start()
    assert opened.wait(120), "the add never reached its first batch"
    return thread, result


def test_opening_a_store_midway_through_an_add_leaves_the_add_whole(tmp_path, embedder):
    path = tmp_path / "store"
    expected = len(chunk_document(load_document(DOC, name="manual.txt")))
    store = Store("uploader", path=path, embedder=embedder, write_batch=4)
    opened, resume = threading.Event(), threading.Event()
    thread, result = _add_paused_midway(store, opened, resume)
    assert 0 < store.count() < expected  # really midway
    with Store("visitor", path=path, embedder=embedder):  # runs recovery
        pass
    resume.set()
    thread.join(120)
    assert result["add"].added and result["add"].n_chunks == expected
    assert store.count() == expected
    assert store.keyword.count() == expected
    again = store.add_file(DOC, name="manual.txt")
    assert not again.added  # whole, so "already indexed" is the truth
    assert store._journal.rows.count() == 0
    store.close()


def test_a_dead_writers_entry_is_rolled_back_on_the_next_open(tmp_path, embedder):
    path = tmp_path / "store"
    with Store("crashed", path=path, embedder=embedder) as store:
        store.add_file(DOC, name="manual.txt")
        doc_hash = store.list_documents()[0].doc_hash
        # what a writer killed midway leaves: its entry, naming a process that is gone
        store._journal.rows.upsert(
            ids=["x"],
            embeddings=[[0.0]],
            metadatas=[
                {"collection": store.collection.name, "doc_hash": doc_hash, "writer": "gone:1:ab"}
            ],
        )
    with Store("crashed", path=path, embedder=embedder) as store:
        assert store.count() == 0
        assert store.keyword.count() == 0  # the keyword index follows Chroma
        assert store._journal.rows.count() == 0


def test_on_a_server_only_entries_without_a_recent_beat_are_rolled_back(chroma_server):
    import chromadb

    host, port = chroma_server
    client = chromadb.HttpClient(host=host, port=port)
    col = client.get_or_create_collection(f"journal-{time.time_ns()}", embedding_function=None)
    col.add(ids=["a", "b", "c"], embeddings=[[1.0]] * 3, metadatas=[{"doc_hash": h} for h in "abc"])
    journal = Journal(client, embedded=False)
    now = time.time()
    rows = {
        "alive": ("a", "replica:7:aa", now - 5),  # another replica, beating
        "stale": ("b", "replica:8:bb", now - STALE_S - 5),  # another replica, silent too long
        "ours": ("c", WRITER, now - STALE_S - 5),  # this process: running on another thread
    }
    for jid, (doc_hash, writer, beat) in rows.items():
        meta = {"collection": col.name, "doc_hash": doc_hash, "writer": writer, "beat": beat}
        journal.rows.upsert(ids=[f"{col.name}:{jid}"], embeddings=[[0.0]], metadatas=[meta])
    assert journal.recover() == 1
    assert sorted(col.get()["ids"]) == ["a", "c"]
    left = journal.rows.get(where={"collection": col.name})["ids"]
    assert sorted(left) == [f"{col.name}:alive", f"{col.name}:ours"]
    journal.rows.delete(ids=left)
    client.delete_collection(col.name)
