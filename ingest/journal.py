"""All-or-nothing adds: a journal entry, naming the process that writes, is written before a
document's chunks and removed after; entries whose writer is gone are rolled back.

Only entries whose writer is gone are touched, so opening a store (a new visitor's page load) never
damages an add in progress: embedded, any other process's entry (the store's lock proves that
process exited); on a server, other processes' entries without a heartbeat for `STALE_S`.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

NAME = "ingest-journal"  # a Chroma collection of one-float rows, beside the documents
# server mode: other replicas may be mid-add; theirs are rolled back after this long without a beat
STALE_S = 900.0
# this process, as entries name their writer
WRITER = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


@dataclass(frozen=True)
class Entry:
    id: str
    meta: dict[str, Any]


class Journal:
    """The journal of one Chroma client; `embedded` when this process holds the store's lock."""

    def __init__(self, client: Any, *, embedded: bool) -> None:
        self.client, self.embedded = client, embedded
        self.rows = client.get_or_create_collection(NAME, embedding_function=None)

    def begin(self, collection: str, doc_hash: str) -> Entry:
        now = time.time()
        meta = {"collection": collection, "doc_hash": doc_hash, "writer": WRITER}
        entry = Entry(f"{collection}:{doc_hash}", {**meta, "started": now, "beat": now})
        self.rows.upsert(ids=[entry.id], embeddings=[[0.0]], metadatas=[entry.meta])
        return entry

    def beat(self, entry: Entry) -> None:
        """On a server, show other replicas this add is alive (embedded: the lock shows it)."""
        if not self.embedded:
            meta = {**entry.meta, "beat": time.time()}
            self.rows.upsert(ids=[entry.id], embeddings=[[0.0]], metadatas=[meta])

    def end(self, entry: Entry) -> None:
        self.rows.delete(ids=[entry.id])

    def writer_gone(self, meta: dict[str, Any], now: float) -> bool:
        if meta.get("writer") == WRITER:
            return False  # ours: still running on another thread (a failed add cleans up itself)
        if self.embedded:
            return True
        return now - float(meta.get("beat", meta.get("started", now))) >= STALE_S

    def recover(self) -> int:
        """Roll back the adds whose writer is gone; how many."""
        now, undone = time.time(), 0
        entries = self.rows.get(include=["metadatas"])
        for jid, meta in zip(entries["ids"], entries["metadatas"] or [], strict=False):
            if not self.writer_gone(meta or {}, now):
                continue
            try:
                col = self.client.get_collection(str(meta["collection"]), embedding_function=None)
                col.delete(where={"doc_hash": str(meta["doc_hash"])})
            except Exception:  # the collection is gone: nothing to roll back
                pass
            self.rows.delete(ids=[jid])
            undone += 1
        return undone
