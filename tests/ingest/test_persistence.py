"""Persistence across processes, crash safety (kill -9 mid-add), and the embedded store's lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from ingest import Store, chunk_document, load_document, retrieve
from ingest.journal import NAME as JOURNAL
from tests.ingest.pdfs import text_pdf

ROOT = Path(__file__).resolve().parents[2]
QUERY = "Which ship carried the spices from the eastern ports?"


def _child(*args: str, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.ingest._child", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180, **kwargs)


def _pages(n: int) -> list[str]:
    return [
        f"Page {i} of the ship's log. The schooner number {i} carried cargo of kind {i % 7} "
        f"from port {i % 11} to harbour {i % 13}, and the weather was {('fair', 'foul')[i % 2]}. "
        * 6
        for i in range(1, n + 1)
    ]


def test_add_in_one_process_query_from_a_fresh_process(tmp_path, embedder):
    path = tmp_path / "store"
    with Store("persist", path=path, embedder=embedder) as store:
        store.add_file(text_pdf(_pages(6)), name="log.pdf")
        store.add_file(b"The Marigold carried the spices from the eastern ports.", name="m.txt")
        here = [[h.chunk_id, h.page, round(h.score, 5)] for h in retrieve(store, QUERY, k=5)]
    proc = _child("query", str(path), "persist", QUERY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    there = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [h[:2] for h in there] == [h[:2] for h in here]
    assert there[0][0] == here[0][0] and all(
        abs(a[2] - b[2]) < 1e-3 for a, b in zip(there, here, strict=True)
    )


def test_kill_9_during_a_large_add_leaves_the_document_complete_or_absent(tmp_path, embedder):
    path = tmp_path / "store"
    pdf = tmp_path / "big.pdf"
    pdf.write_bytes(text_pdf(_pages(30)))
    expected = len(chunk_document(load_document(pdf)))
    cmd = [sys.executable, "-m", "tests.ingest._child", "add", str(path), "crash", str(pdf)]
    child = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    killed_at = None
    for line in child.stdout:
        if line.startswith("progress"):
            done, total = map(int, line.split()[1:])
            assert total == expected
            if done >= 16:  # at least two batches are in Chroma
                os.kill(child.pid, signal.SIGKILL)
                killed_at = done
                break
    child.wait(timeout=60)
    assert killed_at is not None and killed_at < expected, "the add finished before the kill"
    with Store("crash", path=path, embedder=embedder) as store:
        assert store.count() == 0  # a kill midway rolls back on reopen
        journal = store.client.get_collection(JOURNAL, embedding_function=None)
        assert journal.count() == 0
        result = store.add_file(pdf)
        assert result.added and store.count() == expected


def test_a_second_process_gets_a_clear_error_not_a_hang(tmp_path, embedder):
    path = tmp_path / "store"
    with Store("lock", path=path, embedder=embedder):
        proc = _child("open", str(path), "lock", "-")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["error"] == "StoreLockedError"
        assert (
            str(os.getpid()) in report["message"]
            and "in use by another process" in report["message"]
        )
        assert report["seconds"] < 10
        # Within one process the store is shared, not locked against itself.
        with Store("lock-2", path=path, embedder=embedder) as other:
            assert other.count() == 0
    proc = _child("open", str(path), "lock", "-")
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"ok": True}


def _crash_between_writes(command: str, path: Path, owner: str, arg: str) -> None:
    """Run the child until Chroma's write is done and the keyword index's is due; kill -9."""
    cmd = [sys.executable, "-m", "tests.ingest._child", command, str(path), owner, arg]
    child = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in child.stdout:
        if line.startswith("between writes"):
            os.kill(child.pid, signal.SIGKILL)
            break
    assert child.wait(timeout=60) == -signal.SIGKILL, "the child ended before the second write"


def test_kill_9_between_the_chroma_and_keyword_writes_is_repaired_on_open(tmp_path, embedder):
    path = tmp_path / "store"
    ships, tides = tmp_path / "ships.txt", tmp_path / "tides.txt"
    ships.write_text("The Marigold carried the spices from the eastern ports.")
    tides.write_text("Spring tides flood the quay twice a month.")
    with Store("both", path=path, embedder=embedder) as store:
        store.add_file(ships)
    # add: Chroma holds tides.txt, the keyword index never heard of it
    _crash_between_writes("add-then-hang", path, "both", str(tides))
    with Store("both", path=path, embedder=embedder) as store:
        assert store.keyword.count() == store.count() == 2
        hits = retrieve(store, "quay tides", k=2, mode="keyword")
        assert [h.source for h in hits] == ["tides.txt"]
    # delete: Chroma dropped ships.txt, the keyword index still has it
    _crash_between_writes("delete-then-hang", path, "both", "ships.txt")
    with Store("both", path=path, embedder=embedder) as store:
        assert [d.source for d in store.list_documents()] == ["tides.txt"]
        assert store.keyword.count() == store.count() == 1
        assert retrieve(store, "Marigold spices", k=2, mode="keyword") == []
