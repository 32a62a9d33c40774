"""webapp.documents.Library on a real embedded Chroma: upload caps per request and per session
(checked before reading), and the start-up sweep of session collections an earlier run left."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingest import Embedder, FileLimits, Store, collection_name
from webapp.documents import Library, UploadLimits, sweep_orphans


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(precision="fp32")


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Names of the files read from disk (`Path.read_bytes`), in order."""
    seen: list[str] = []
    original = Path.read_bytes

    def read_bytes(path: Path) -> bytes:
        seen.append(path.name)
        return original(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    return seen


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def test_files_over_the_request_caps_are_refused_unread_and_the_rest_indexed(
    tmp_path, embedder, reads
):
    caps = UploadLimits(max_files=4, max_request_bytes=3000)
    library = Library(
        path=tmp_path / "chroma",
        embedder=embedder,
        limits=FileLimits(max_bytes=2500),  # each file
        uploads=caps,
    )
    try:
        files = [
            write(tmp_path, "one.txt", "The first note is about herons. " + " " * 1500),
            write(tmp_path, "huge.txt", "Too big for one file. " + " " * 5000),
            write(tmp_path, "two.txt", "The second note is about otters. " + " " * 1500),
            write(tmp_path, "three.txt", "The third note is about voles."),
            write(tmp_path, "four.txt", "The fourth note is about newts."),
        ]
        results = library.add_files("key", [(p.name, p) for p in files])
    finally:
        library.close()
    assert [r.name for r in results] == [p.name for p in files]  # one result per file, in order
    assert [r.ok for r in results] == [True, False, False, True, False]
    assert "over the" in results[1].message  # the file's own size cap (ingest.FileLimits)
    assert "may hold 3,000 bytes together" in results[2].message
    assert "at most 4 files" in results[4].message
    assert reads == ["one.txt", "three.txt"]  # the refused files were never read


def test_a_session_may_hold_so_many_documents_and_chunks(tmp_path, embedder):
    caps = UploadLimits(max_documents=2, max_chunks=6)
    library = Library(path=tmp_path / "chroma", embedder=embedder, uploads=caps)
    long = "\n\n".join(f"Paragraph {i} tells of harbour {i} and its tides. " * 25 for i in range(8))
    try:
        first = library.add_files("key", [("small.txt", b"A short note about owls.")])
        assert first[0].ok
        (over,) = library.add_files("key", [("long.txt", long.encode())])
        assert not over.ok and "chunks and this session has room for 5 more" in over.message
        assert "at most 6" in over.message
        again = library.add_files("key", [("small-copy.txt", b"A short note about owls.")])
        assert "already indexed" in again[0].message  # the same content counts nothing
        assert library.add_files("key", [("second.txt", b"A note about larks.")])[0].ok
        (full,) = library.add_files("key", [("third.txt", b"A note about wrens.")])
        assert not full.ok and "already holds 2 documents" in full.message
        assert sorted(d.source for d in library.documents("key")) == ["second.txt", "small.txt"]
        assert library.documents("other-key") == []  # caps are per session: others start empty
        assert library.add_files("other-key", [("third.txt", b"A note about wrens.")])[0].ok
    finally:
        library.close()


def test_start_up_sweep_drops_only_session_collections_an_earlier_run_left(tmp_path, embedder):
    path = tmp_path / "chroma"
    orphans = ["session-0123456789abcdef01234567", "session-feedfacefeedfacefeedface"]
    kept = ["default", "team", "sessionless", "session-shared-library"]
    for owner in orphans + kept:
        with Store(owner, path=path, embedder=embedder) as store:
            store.add_file(f"The notes of {owner}.".encode(), name=f"{owner}.txt")
    # the shared library's name starts like a session's: it is still never touched
    assert sorted(sweep_orphans(path, keep=["session-shared-library"])) == sorted(orphans)
    assert sweep_orphans(path, keep=["session-shared-library"]) == []
    library = Library(path=path, embedder=embedder, shared="session-shared-library")
    try:
        library.add_files("key", [("mine.txt", b"A new session's own note.")])
        rows = sorted((r.source, r.shared) for r in library.documents("key"))
        assert rows == [("mine.txt", False), ("session-shared-library.txt", True)]
    finally:
        library.close()
    with Store("probe-after", path=path, embedder=embedder) as store:
        names = {c.name for c in store.client.list_collections()}
    assert not {collection_name(o) for o in orphans} & names
    assert {collection_name(o) for o in kept} <= names
    for owner in orphans:
        assert not (path / "keyword" / collection_name(owner)).exists()  # its files went too
    for owner in kept:
        with Store(owner, path=path, embedder=embedder) as store:
            assert [d.source for d in store.list_documents()] == [f"{owner}.txt"]
