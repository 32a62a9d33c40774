"""Per-session document collections for the web app: owners, uploads, listing, search, expiry.

A browser session never names its collection: the server maps the session's key to a random
owner id it generated itself, so one session cannot reach another's documents. Collections idle
for longer than `ttl_s` are dropped. A host may configure a shared, read-only library collection
(filled beforehand with `python -m ingest --collection NAME add ...`) that every session searches.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ingest import DEFAULT_MODE, Embedder, FileLimits, Hit, IngestError, Store, retrieve
from ingest.retrieve import CANDIDATES

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


@dataclass(frozen=True)
class FileResult:
    """What happened to one uploaded file, in a sentence for the user."""

    name: str
    ok: bool
    message: str


@dataclass(frozen=True)
class DocumentRow:
    source: str
    pages: int
    chunks: int
    shared: bool


class _Session:
    def __init__(self, owner: str, now: float) -> None:
        self.owner, self.last_used = owner, now
        self.indexing = 0
        self.done = threading.Condition()


class Library:
    """Session key -> owner -> Chroma collection, plus an optional shared read-only library."""

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        embedder: Embedder | None = None,
        shared: str | None = None,
        ttl_s: float = 3600.0,
        limits: FileLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.ttl_s, self.limits, self.clock = path, ttl_s, limits or FileLimits(), clock
        self.embedder = embedder or Embedder()
        self._sessions: dict[str, _Session] = {}
        self._stores: dict[str, Store] = {}
        self._lock = threading.RLock()
        self.shared_name = shared
        self.shared = self._open(shared) if shared else None

    # -- sessions --------------------------------------------------------------------------------

    def _session(self, key: str) -> _Session:
        if not key:
            raise ValueError("a session key is required")
        with self._lock:
            now = self.clock()
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(f"session-{secrets.token_hex(12)}", now)
            session.last_used = now
            return session

    def owner_for(self, key: str) -> str:
        """The server-generated owner id of a session (created on first use)."""
        return self._session(key).owner

    def _open(self, owner: str) -> Store:
        with self._lock:
            store = self._stores.get(owner)
            if store is None:
                store = self._stores[owner] = Store(owner, path=self.path, embedder=self.embedder)
            return store

    def sweep(self) -> list[str]:
        """Drop the collections of sessions idle for longer than `ttl_s`; return their owners."""
        removed = []
        with self._lock:
            now = self.clock()
            for key, session in list(self._sessions.items()):
                if session.indexing or now - session.last_used <= self.ttl_s:
                    continue
                del self._sessions[key]
                store = self._stores.pop(session.owner, None) or Store(
                    session.owner, path=self.path, embedder=self.embedder
                )
                store.drop(recreate=False)
                store.close()
                removed.append(session.owner)
        return removed

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()
            if self.shared is not None:
                self.shared.close()

    # -- documents -------------------------------------------------------------------------------

    def add_files(
        self, key: str, files: Iterable[tuple[str, bytes]], progress: Progress | None = None
    ) -> list[FileResult]:
        """Index uploaded files one by one; a rejected file gets its reason and the rest go on."""
        files = list(files)
        session = self._session(key)
        with session.done:
            session.indexing += 1
        try:
            store = self._open(session.owner)
            results = []
            for i, (name, data) in enumerate(files):
                results.append(self._add_one(store, name, data, i, len(files), progress))
            return results
        finally:
            with session.done:
                session.indexing -= 1
                session.last_used = self.clock()
                session.done.notify_all()

    def _add_one(
        self, store: Store, name: str, data: bytes, i: int, n: int, progress: Progress | None
    ) -> FileResult:
        def step(done: int, total: int) -> None:
            if progress is not None:
                progress((i + done / max(total, 1)) / n, f"Indexing {name}: {done}/{total} chunks")

        if progress is not None:
            progress(i / n, f"Reading {name}")
        try:
            result = store.add_file(data, name=name, limits=self.limits, progress=step)
        except IngestError as err:
            return FileResult(name, False, str(err))
        return FileResult(name, True, result.message)

    def indexing(self, key: str) -> int:
        """How many uploads of this session are still being indexed."""
        return self._session(key).indexing

    def wait_indexed(self, key: str, timeout: float) -> bool:
        """Block until this session's uploads are indexed (True) or `timeout` passes (False)."""
        session = self._session(key)
        with session.done:
            return session.done.wait_for(lambda: session.indexing == 0, timeout=timeout)

    def documents(self, key: str) -> list[DocumentRow]:
        own = self._open(self.owner_for(key)).list_documents()
        rows = [DocumentRow(d.source, d.n_pages, d.n_chunks, False) for d in own]
        if self.shared is not None:
            rows += [
                DocumentRow(d.source, d.n_pages, d.n_chunks, True)
                for d in self.shared.list_documents()
            ]
        return rows

    def delete(self, key: str, source: str) -> int:
        """Remove one of this session's documents (the shared library is read-only)."""
        return self._open(self.owner_for(key)).delete(source)

    def search(
        self,
        key: str,
        query: str,
        k: int,
        min_score: float = 0.0,
        *,
        mode: str = DEFAULT_MODE,
        candidates: int = CANDIDATES,
    ) -> list[Hit]:
        """The `k` best pages from this session's documents and the shared library, ranked
        together (`ingest.retrieve`); `QueryError` for a query that cannot be searched."""
        stores = [self._open(self.owner_for(key))]
        if self.shared is not None:
            stores.append(self.shared)
        return retrieve(stores, query, k, min_score=min_score, mode=mode, candidates=candidates)

    def has_documents(self, key: str) -> bool:
        own = self._open(self.owner_for(key)).count()
        return bool(own or (self.shared is not None and self.shared.count()))


def start_sweeper(library: Library, every_s: float = 60.0) -> threading.Thread:
    """A daemon thread that drops idle sessions' collections every `every_s` seconds."""

    def run() -> None:
        while True:
            time.sleep(every_s)
            try:
                library.sweep()
            except (
                Exception
            ) as err:  # a failed sweep must not kill the thread; the next one retries
                print(f"session sweep failed: {err}", flush=True)

    thread = threading.Thread(target=run, name="session-sweeper", daemon=True)
    thread.start()
    return thread
