"""Per-session document collections for the web app: owners, uploads, listing, search, expiry.

A session is named by a key the server issued (`webapp.sessions`), never by anything the client
picks; the server maps the key to a random owner id it generated itself, so one session cannot
reach another's documents. A session's collection is made on its first upload; collections idle
for longer than `ttl_s` are dropped, and at start-up those an earlier process left behind
(`sweep_orphans`). Uploads are bounded per request and per session (`UploadLimits`). A host may
configure a shared, read-only library collection (filled beforehand with
`python -m ingest --collection NAME add ...`) that every session searches.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ingest import (
    DEFAULT_MODE,
    Document,
    DocumentNotFoundError,
    Embedder,
    FileLimits,
    Hit,
    IngestError,
    Store,
    chunk_document,
    collection_name,
    load_document,
    load_tokenizer,
    retrieve,
)
from ingest.embeddings import LazyEmbedder, embedder_name
from ingest.retrieve import CANDIDATES

Progress = Callable[[float, str], None]  # (fraction done, what is happening)
SESSION_PREFIX = "session-"  # every session owner id starts so; nothing else may
MB = 1024 * 1024


class SessionFullError(IngestError):
    """An upload that would take a session over its cap on documents or chunks."""


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


@dataclass(frozen=True)
class UploadLimits:
    """Caps on one upload request and on one session; a file over a cap is refused with the
    reason and the rest of its request goes on (each file's own size: `FileLimits`)."""

    max_files: int = 10  # per request
    max_request_bytes: int = 50 * MB  # per request, the files together
    max_documents: int = 50  # per session
    max_chunks: int = 5000  # per session


class _Session:
    def __init__(self, owner: str, now: float) -> None:
        self.owner, self.last_used = owner, now
        self.pending: list[str] = []  # names of files accepted and not yet indexed
        self.done = threading.Condition()
        self.adding = threading.Lock()  # one upload of a session at a time: its caps hold


class Library:
    """Session key -> owner -> Chroma collection, plus an optional shared read-only library.

    An empty key is a session without documents of its own: it searches the shared library only.
    """

    def __init__(
        self,
        *,
        path: str | Path | None = None,
        embedder: Embedder | None = None,
        shared: str | None = None,
        ttl_s: float = 3600.0,
        limits: FileLimits | None = None,
        uploads: UploadLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path, self.ttl_s, self.limits, self.clock = path, ttl_s, limits or FileLimits(), clock
        self.uploads = uploads or UploadLimits()
        embedder_name()  # a bad SCRATCHGPT_EMBEDDER fails here, at start, not at a first upload
        self.embedder = embedder or LazyEmbedder()  # loaded on first use, or `warm()`
        self._sessions: dict[str, _Session] = {}
        self._stores: dict[str, Store] = {}
        self._lock = threading.RLock()
        self.shared_name = shared
        self.shared = self._open(shared) if shared else None

    def warm(self) -> None:
        """Load the embedder in the background if it is not loaded yet (a page opened: an
        upload or a document question may follow)."""
        warm = getattr(self.embedder, "warm", None)
        if warm is not None:
            warm()

    # -- sessions --------------------------------------------------------------------------------

    def _session(self, key: str) -> _Session:
        if not key:
            raise ValueError("a session key is required")
        with self._lock:
            now = self.clock()
            session = self._sessions.get(key)
            if session is None:
                owner = f"{SESSION_PREFIX}{secrets.token_hex(12)}"
                session = self._sessions[key] = _Session(owner, now)
            session.last_used = now
            return session

    def owner_for(self, key: str) -> str:
        """The server-generated owner id of a session (created on first use)."""
        return self._session(key).owner

    def _find(self, key: str) -> _Session | None:
        """A session that exists already (reading creates none), marked as used."""
        with self._lock:
            session = self._sessions.get(key) if key else None
            if session is not None:
                session.last_used = self.clock()
            return session

    def _own(self, key: str) -> Store | None:
        """This session's collection; None before its first upload (it has nothing yet)."""
        session = self._find(key)
        with self._lock:
            return None if session is None else self._stores.get(session.owner)

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
                if session.pending or now - session.last_used <= self.ttl_s:
                    continue
                del self._sessions[key]
                store = self._stores.pop(session.owner, None)
                if store is not None:
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

    # -- uploads ---------------------------------------------------------------------------------

    def add_files(
        self,
        key: str,
        files: Iterable[tuple[str, Path | bytes]],
        progress: Progress | None = None,
    ) -> list[FileResult]:
        """Index uploaded files (paths or bytes) one by one, each read only when its turn comes;
        a refused file gets its reason and the rest go on. Results in the files' order."""
        files = list(files)
        session = self._session(key)
        refused = self._admit(files)
        todo = [name for i, (name, _) in enumerate(files) if i not in refused]
        with session.done:
            session.pending += todo
        results = []
        try:
            with session.adding:
                for i, (name, data) in enumerate(files):
                    if i in refused:
                        results.append(refused[i])
                        continue
                    results.append(self._add_one(session, name, data, i, len(files), progress))
                    todo.remove(name)
                    self._finished(session, [name])
            return results
        finally:
            self._finished(session, todo)  # what an unexpected error left undone

    def _finished(self, session: _Session, names: list[str]) -> None:
        with session.done:
            for name in names:
                session.pending.remove(name)
            session.last_used = self.clock()
            session.done.notify_all()

    def _admit(self, files: list[tuple[str, Path | bytes]]) -> dict[int, FileResult]:
        """The files this request may not add, by index, with the reason: beyond the number of
        files, or beyond the bytes per request (sizes from the file system: nothing is read)."""
        caps, refused, total = self.uploads, {}, 0
        for i, (name, data) in enumerate(files):
            try:
                size = len(data) if isinstance(data, bytes) else os.stat(data).st_size
            except OSError:
                why = "the upload did not arrive whole; upload it again."
                refused[i] = FileResult(name, False, why)
                continue
            if i >= caps.max_files:
                why = (
                    f"one upload takes at most {caps.max_files} files; upload it in another batch."
                )
                refused[i] = FileResult(name, False, why)
            elif size > self.limits.max_bytes:
                continue  # `load_document` refuses it by its size, unread
            elif total + size > caps.max_request_bytes:
                why = (
                    f"the files of one upload may hold {_size(caps.max_request_bytes)} together, "
                    "and this one would go over; upload it in another batch."
                )
                refused[i] = FileResult(name, False, why)
            else:
                total += size
        return refused

    def _add_one(
        self,
        session: _Session,
        name: str,
        data: Path | bytes,
        i: int,
        n: int,
        progress: Progress | None,
    ) -> FileResult:
        def step(done: int, total: int) -> None:
            if progress is not None:
                progress((i + done / max(total, 1)) / n, f"Indexing {name}: {done}/{total} chunks")

        if progress is not None:
            progress(i / n, f"Reading {name}")
        try:
            store = self._open(session.owner)
            result = store.add_document(self._load_within_caps(store, name, data), progress=step)
        except IngestError as err:
            return FileResult(name, False, str(err))
        return FileResult(name, True, result.message)

    def _load_within_caps(self, store: Store, name: str, data: Path | bytes) -> Document:
        """The loaded file, unless it would take the session over its documents or chunks."""
        caps, documents = self.uploads, store.list_documents()
        if len(documents) >= caps.max_documents:
            raise SessionFullError(
                f"this session already holds {len(documents)} documents, the most it may; "
                "delete one to add another."
            )
        document = load_document(data, name=name, limits=self.limits)
        if store.find(document.doc_hash) is None:  # the same content again adds nothing
            # counted before embedding (the store chunks it again: cheap beside the embedding)
            chunks = len(chunk_document(document, load_tokenizer(self.embedder.model_path)))
            room = max(0, caps.max_chunks - sum(d.n_chunks for d in documents))
            if chunks > room:
                raise SessionFullError(
                    f"{document.source!r} makes {chunks} chunks and this session has room for "
                    f"{room} more (at most {caps.max_chunks}); delete a document or upload a "
                    "shorter one."
                )
        return document

    def pending(self, key: str) -> list[str]:
        """Names of this session's files still waiting to be indexed."""
        session = self._find(key)
        if session is None:
            return []
        with session.done:
            return list(session.pending)

    def wait_indexed(self, key: str, timeout: float) -> bool:
        """Block until this session's uploads are indexed (True) or `timeout` passes (False)."""
        session = self._find(key)
        if session is None:
            return True
        with session.done:
            return session.done.wait_for(lambda: not session.pending, timeout=timeout)

    # -- documents -------------------------------------------------------------------------------

    def _stores_of(self, key: str) -> list[Store]:
        return [s for s in (self._own(key), self.shared) if s is not None]

    def documents(self, key: str) -> list[DocumentRow]:
        own, rows = self._own(key), []
        if own is not None:
            rows = [
                DocumentRow(d.source, d.n_pages, d.n_chunks, False) for d in own.list_documents()
            ]
        if self.shared is not None:
            rows += [
                DocumentRow(d.source, d.n_pages, d.n_chunks, True)
                for d in self.shared.list_documents()
            ]
        return rows

    def delete(self, key: str, source: str) -> int:
        """Remove one of this session's documents (the shared library is read-only)."""
        own = self._own(key)
        if own is None:
            raise DocumentNotFoundError(f"No document {source!r} among this session's documents.")
        return own.delete(source)

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
        stores = self._stores_of(key)
        if not stores:
            return []
        return retrieve(stores, query, k, min_score=min_score, mode=mode, candidates=candidates)

    def has_documents(self, key: str) -> bool:
        return any(store.count() for store in self._stores_of(key))


def sweep_orphans(path: str | Path | None = None, *, keep: Iterable[str] = ()) -> list[str]:
    """At start-up, before a `Library` opens the store: drop the session collections an earlier
    process left (their keys died with it) and return their owners. Only for an embedded store,
    which this process holds alone: on a Chroma server other replicas' sessions are alive. Owners
    not named like sessions, and those in `keep` (the shared library), are never touched."""
    probe = Store(f"{SESSION_PREFIX}probe-{secrets.token_hex(6)}", path=path)
    try:
        spared = {*keep, probe.owner}
        orphans = []
        for collection in probe.client.list_collections():
            owner = str((collection.metadata or {}).get("owner", ""))
            if (
                owner.startswith(SESSION_PREFIX)
                and owner not in spared
                and collection.name == collection_name(owner)
            ):
                orphans.append(owner)
    finally:
        probe.drop(recreate=False)
        probe.close()
    dropped = []
    for owner in orphans:
        try:
            with Store(owner, path=path) as store:
                store.drop(recreate=False)
        except IngestError as err:  # e.g. indexed by another embedder: left for the CLI
            print(f"kept {owner}'s collection: {err}", flush=True)
            continue
        dropped.append(owner)
    return dropped


def _size(n: int) -> str:
    return f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n:,} bytes"  # as `ingest.loaders` says sizes


def start_sweeper(library: Library, every_s: float = 60.0) -> threading.Thread:
    """A daemon thread that drops idle sessions' collections every `every_s` seconds."""
    if not every_s > 0:
        raise ValueError(f"the sweep interval must be a positive number of seconds, not {every_s}")

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
