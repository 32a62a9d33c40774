"""The only code that talks to Chroma: per-owner collections of chunks, add / list / delete / query.

Embedded `PersistentClient` under `data/chroma` by default, locked to one process
(`ingest.embedded`); a Chroma server through `HttpClient` when
`CHROMA_HOST`/`CHROMA_PORT` (or host/port) are given. Collections are stamped with the embedder's
name and dimension. A document is added whole or not at all (`ingest.journal`); opening a store
rolls back the adds a crashed process (kill -9) left half-done, never one still running.

Each collection has a keyword index (`ingest.keyword_index`) in files beside the store (under
`<store>/keyword/`, or `data/keyword/<host>-<port>/` for a server), written after Chroma on add and
delete and brought back in line with Chroma on open and whenever their chunk counts differ. The
embedder loads on first use, so listing and deleting never load the model.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import chromadb
import numpy as np

from ingest.chunking import Chunk, chunk_document, load_tokenizer
from ingest.embedded import EmbeddedClient, chroma_settings
from ingest.embeddings import MODEL_NAME, Embedder, LazyEmbedder, model_dimension
from ingest.errors import (
    DocumentNotFoundError,
    EmbedderMismatchError,
    IngestError,
    StoreUnavailableError,
)
from ingest.journal import Journal
from ingest.keyword_index import KeywordIndex
from ingest.loaders import Document, FileLimits, load_document
from ingest.records import AddResult, DocumentInfo
from ingest.rerank import sentence_bags

DEFAULT_PATH = Path("data/chroma")
# Chroma's default ef_search (100) loses recall at 100k chunks (bench/ingest.py, bench/README.md)
HNSW = {"space": "cosine", "ef_construction": 200, "max_neighbors": 32, "ef_search": 200}
EMBED_BATCH = 256

Progress = Callable[[int, int], None]  # (chunks written so far, total)


def collection_name(owner: str) -> str:
    """A valid, collision-free Chroma collection name for an owner (user, session or CLI name)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", owner).strip("-_")[:40] or "owner"
    return f"docs-{slug}-{hashlib.sha256(owner.encode()).hexdigest()[:10]}"


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _collection_lock(name: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.Lock())


class Store:
    """A per-owner collection of chunks in Chroma, embedded or on a server."""

    def __init__(
        self,
        owner: str = "default",
        *,
        path: str | Path | None = None,
        host: str | None = None,
        port: int | None = None,
        embedder: Embedder | None = None,
        recreate: bool = False,
        write_batch: int = EMBED_BATCH,
        keyword_path: str | Path | None = None,
    ) -> None:
        """Open (or create) `owner`'s collection; `recreate` drops it first (to re-index).
        `keyword_path`: where the keyword indexes live (default: beside the store, see above)."""
        self.owner = owner
        self.write_batch = write_batch
        host = host or os.environ.get("CHROMA_HOST") or None
        port = port or int(os.environ.get("CHROMA_PORT") or 0) or None
        self._embedded: EmbeddedClient | None = None
        self._embedder = embedder if embedder is not None else LazyEmbedder()
        if host or port:
            self.location = f"{host or 'localhost'}:{port or 8000}"
            default_keyword = DEFAULT_PATH.parent / "keyword" / self.location.replace(":", "-")
            try:
                self.client = chromadb.HttpClient(
                    host=host or "localhost", port=port or 8000, settings=chroma_settings()
                )
                self.client.heartbeat()
            except Exception as exc:
                raise StoreUnavailableError(
                    f"Cannot reach the Chroma server at {self.location} ({exc}); start it with "
                    "`chroma run --path DIR --port PORT`, or unset CHROMA_HOST/CHROMA_PORT."
                ) from exc
        else:
            self._embedded = EmbeddedClient.acquire(Path(path or DEFAULT_PATH))
            self.location = self._embedded.path
            self.client = self._embedded.client
            default_keyword = Path(self.location) / "keyword"
        try:
            self.max_batch = int(self.client.get_max_batch_size())
            self._journal = Journal(self.client, embedded=self._embedded is not None)
            if recreate and collection_name(owner) in {
                c.name for c in self.client.list_collections()
            }:
                self.client.delete_collection(collection_name(owner))
            self.collection = self._open_collection()
            if self._journal.recover() and self._embedded is not None:
                self._embedded.forget()  # it may have rolled back any collection's chunks
            self.keyword = KeywordIndex(
                Path(keyword_path or default_keyword) / self.collection.name, bags=sentence_bags
            )
            self.sync_keyword()
        except Exception:
            self.close()
            raise

    @property
    def embedder(self) -> Embedder:
        """The embedder (a `LazyEmbedder` by default: listing and deleting never load it)."""
        return self._embedder

    def _stamp(self) -> dict[str, Any]:
        """The embedder's name and dimension, read from the model files if it is not loaded."""
        if isinstance(self._embedder, LazyEmbedder) and not self._embedder.loaded:
            return {"embedder": MODEL_NAME, "dimension": model_dimension()}
        return {"embedder": self._embedder.name(), "dimension": self._embedder.dimension}

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the embedded store's lock (a no-op for a server)."""
        if self._embedded is not None:
            self._embedded.release()
            self._embedded = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_collection(self) -> Any:
        stamp = self._stamp()
        col = self.client.get_or_create_collection(
            collection_name(self.owner),
            embedding_function=None,
            metadata={**stamp, "owner": self.owner[:200]},
            configuration={"hnsw": dict(HNSW)},
        )
        meta = col.metadata or {}
        if (meta.get("embedder"), meta.get("dimension")) != (stamp["embedder"], stamp["dimension"]):
            raise EmbedderMismatchError(
                f"The documents of {self.owner!r} were indexed with {meta.get('embedder')} "
                f"({meta.get('dimension')}-d), but this app embeds with {stamp['embedder']} "
                f"({stamp['dimension']}-d); re-index: run `python -m ingest delete --all` "
                "and add the files again."
            )
        return col

    # -- documents -------------------------------------------------------------------------------

    def find(self, doc_hash: str) -> str | None:
        """Source name of an indexed document with this content hash, or None."""
        got = self.collection.get(where={"doc_hash": doc_hash}, limit=1, include=["metadatas"])
        return str(got["metadatas"][0]["source"]) if got["ids"] else None

    def add_file(
        self,
        source: str | Path | bytes,
        *,
        name: str | None = None,
        limits: FileLimits | None = None,
        progress: Progress | None = None,
    ) -> AddResult:
        """Load, chunk, embed and store one file (a path, or bytes with their upload name)."""
        return self.add_document(load_document(source, name=name, limits=limits), progress)

    def add_document(self, document: Document, progress: Progress | None = None) -> AddResult:
        """Add a loaded document whole or not at all; adding the same content again is a no-op."""
        n_pages = len(document.pages) + len(document.empty_pages)
        with _collection_lock(self.collection.name):  # no two threads add the same file at once
            existing = self.find(document.doc_hash)
            if existing is None:
                chunks = chunk_document(document, load_tokenizer(self.embedder.model_path))
                with self._writing():
                    self._write(document.doc_hash, chunks, progress)
        if existing is not None:
            return AddResult(
                document.source,
                document.doc_hash,
                False,
                n_pages,
                0,
                document.empty_pages,
                f"{document.source!r} is already indexed (same content as {existing!r}); "
                "nothing added.",
            )
        empty = ", ".join(str(p) for p in document.empty_pages)
        skipped = f"; no text on page(s) {empty}, skipped" if empty else ""
        return AddResult(
            document.source,
            document.doc_hash,
            True,
            n_pages,
            len(chunks),
            document.empty_pages,
            f"Added {document.source!r}: {len(document.pages)} pages, "
            f"{len(chunks)} chunks{skipped}.",
        )

    def _write(self, doc_hash: str, chunks: list[Chunk], progress: Progress | None) -> None:
        entry = self._journal.begin(self.collection.name, doc_hash)
        step = max(1, min(self.max_batch, self.write_batch))
        try:
            # a batch is written on a writer thread while the next one is embedded
            with ThreadPoolExecutor(1, thread_name_prefix="chroma-write") as writer:
                pending, written = None, 0
                for first in range(0, len(chunks), step):
                    batch = chunks[first : first + step]
                    vectors = self.embedder.encode([c.text for c in batch])
                    if pending is not None:
                        written = pending.result()
                        self._journal.beat(entry)
                        if progress is not None:
                            progress(written, len(chunks))
                    pending = writer.submit(self._add_batch, batch, vectors, first + len(batch))
                if pending is not None:
                    written = pending.result()
                    if progress is not None:
                        progress(written, len(chunks))
        except BaseException as exc:
            try:
                self.collection.delete(where={"doc_hash": doc_hash})
                self._journal.end(entry)
            except Exception:  # server gone: the journal entry rolls it back on a later open
                pass
            if isinstance(exc, Exception) and not isinstance(exc, IngestError):
                raise StoreUnavailableError(
                    f"Storing the document failed ({type(exc).__name__}: {exc}); nothing was kept, "
                    "try adding it again."
                ) from exc
            raise
        self._journal.end(entry)
        if chunks:  # second write: a crash before it is repaired by `sync_keyword` on open
            self.keyword.add(
                doc_hash, chunks[0].source, [c.id for c in chunks], [c.text for c in chunks]
            )

    def _add_batch(self, batch: list[Chunk], vectors: np.ndarray, written: int) -> int:
        self.collection.add(
            ids=[c.id for c in batch],
            embeddings=vectors,
            documents=[c.text for c in batch],
            metadatas=[c.metadata() for c in batch],
        )
        return written

    def _all_metadatas(self, where: dict[str, Any] | None = None) -> list[tuple[str, dict]]:
        out, offset = [], 0
        while True:
            got = self.collection.get(
                where=where, include=["metadatas"], limit=self.max_batch, offset=offset
            )
            out.extend(zip(got["ids"], got["metadatas"], strict=True))
            if len(got["ids"]) < self.max_batch:
                return out
            offset += self.max_batch

    def list_documents(self) -> list[DocumentInfo]:
        """Indexed documents with their page and chunk counts, by source name."""
        pages: dict[str, set[int]] = {}
        chunks: dict[str, int] = {}
        names: dict[str, str] = {}
        for _, meta in self._all_metadatas():
            h = str(meta["doc_hash"])
            names[h] = str(meta["source"])
            pages.setdefault(h, set()).add(int(meta["page"]))
            chunks[h] = chunks.get(h, 0) + 1
        infos = [DocumentInfo(names[h], h, len(pages[h]), chunks[h]) for h in names]
        return sorted(infos, key=lambda d: (d.source, d.doc_hash))

    def delete(self, document: str) -> int:
        """Remove every chunk of a document named by source name or (a prefix of) its hash."""
        matches = [
            d
            for d in self.list_documents()
            if document in (d.source, d.doc_hash)
            or (len(document) >= 8 and d.doc_hash.startswith(document))
        ]
        if not matches:
            raise DocumentNotFoundError(
                f"No document {document!r} in this collection; "
                "run `python -m ingest list` to see names."
            )
        removed = 0
        for doc in matches:
            removed += doc.n_chunks
            with self._writing():
                self.collection.delete(where={"doc_hash": doc.doc_hash})
            self.keyword.remove(doc.doc_hash)  # a crash before this is repaired on open
        return removed

    def count(self) -> int:
        """Number of chunks in the collection (embedded: kept between this process's writes)."""
        if self._embedded is None:  # on a server another replica may have written meanwhile
            return int(self.collection.count())
        return self._embedded.count(self.collection)

    def _writing(self) -> AbstractContextManager[None]:
        """Around each write to the collection, so a kept count is dropped."""
        if self._embedded is None:
            return nullcontext()
        return self._embedded.writing(self.collection.name)

    # -- the keyword index -----------------------------------------------------------------------

    def _all_ids(self) -> list[str]:
        out: list[str] = []
        while True:
            got = self.collection.get(include=[], limit=self.max_batch, offset=len(out))
            out.extend(got["ids"])
            if len(got["ids"]) < self.max_batch:
                return out

    def _documents(self, chunk_ids: set[str]) -> dict[str, tuple[str, list[str], list[str]]]:
        """{doc_hash: (source, chunk ids, texts)} of every document holding one of `chunk_ids`."""
        ids = sorted(chunk_ids)
        hashes: set[str] = set()
        for first in range(0, len(ids), self.max_batch):
            got = self.collection.get(
                ids=ids[first : first + self.max_batch], include=["metadatas"]
            )
            hashes.update(str(meta["doc_hash"]) for meta in got["metadatas"])
        out = {}
        for doc_hash in sorted(hashes):
            got = self.collection.get(
                where={"doc_hash": doc_hash}, include=["documents", "metadatas"]
            )
            source = str(got["metadatas"][0]["source"]) if got["ids"] else ""
            out[doc_hash] = (source, list(got["ids"]), [str(t) for t in got["documents"]])
        return out

    def sync_keyword(self) -> int:
        """Bring the keyword index in line with Chroma (re-read what differs); documents redone."""
        return self.keyword.sync(self._all_ids(), self._documents)

    def keyword_search(
        self, query: str, k: int, total: int | None = None
    ) -> tuple[list[tuple[str, float]], dict[str, float]]:
        """BM25 (`KeywordIndex.search`), after re-syncing if Chroma changed underneath (another
        replica on a shared server, or a crash between the two writes). `total`: the caller's
        `count()` of this query (each count is a Chroma call)."""
        if self.keyword.count() != (self.count() if total is None else total):
            self.sync_keyword()
        return self.keyword.search(query, k)

    def chunks(self, ids: list[str], *, with_embeddings: bool = True) -> dict[str, Any]:
        """Chroma's rows for these chunk ids (documents, metadatas, and embeddings if asked)."""
        include = ["documents", "metadatas", *(["embeddings"] if with_embeddings else [])]
        return self.collection.get(ids=ids, include=include)

    def query(
        self,
        vectors: np.ndarray,
        k: int,
        *,
        with_embeddings: bool = False,
        total: int | None = None,
    ) -> dict[str, Any]:
        """Nearest chunks for each query vector (Chroma's result dict, cosine distances);
        `total`: the caller's `count()`, saving a Chroma call."""
        include = ["documents", "metadatas", "distances"]
        if with_embeddings:
            include.append("embeddings")
        k = max(1, min(k, self.count() if total is None else total))
        return self.collection.query(query_embeddings=vectors, n_results=k, include=include)

    def drop(self, *, recreate: bool = True) -> None:
        """Delete this owner's whole collection (to re-index, or for good when a session ends)."""
        with self._writing():
            self.client.delete_collection(self.collection.name)
        self.keyword.clear(recreate=recreate)
        if recreate:
            self.collection = self._open_collection()
