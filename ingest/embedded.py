"""The embedded Chroma store's client: one `PersistentClient` per directory per process, guarded by
an fcntl lock so a second process gets `StoreLockedError` (naming the holder's pid), not a hang."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import chromadb
from chromadb.config import Settings

from ingest.errors import StoreLockedError


def chroma_settings() -> Settings:
    return Settings(anonymized_telemetry=False)


class EmbeddedClient:
    """One process-wide PersistentClient per path, with the cross-process lock it holds."""

    handles: dict[str, EmbeddedClient] = {}  # noqa: RUF012 - process-wide registry
    guard = threading.Lock()

    def __init__(self, path: str) -> None:
        self.path, self.refs = path, 0
        self.lock_file = open(os.path.join(path, "ingest.lock"), "a+")  # noqa: SIM115
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.seek(0)
            holder = self.lock_file.read().strip() or "unknown"
            self.lock_file.close()
            raise StoreLockedError(
                f"The document store at {path} is in use by another process (pid {holder}); "
                "close that app or CLI, or use a different store path."
            ) from None
        self.lock_file.truncate(0)
        self.lock_file.write(str(os.getpid()))
        self.lock_file.flush()
        self.client = chromadb.PersistentClient(path=path, settings=chroma_settings())
        # Chunk counts per collection, kept between writes: this process holds the store's lock,
        # so only its own writes change them (a Chroma count takes ~6 ms at 10k chunks, and
        # every query needs one). A write in progress, or one since a count began, keeps none.
        self._counts: dict[str, int] = {}
        self._writes: dict[str, list[int]] = {}  # name -> [writes in progress, writes begun]
        self._epoch = 0  # bumped by `forget`
        self._count_lock = threading.Lock()

    def count(self, collection: Any) -> int:
        """The collection's chunk count, from memory when no write happened since the last."""
        name = collection.name
        with self._count_lock:
            if name in self._counts:
                return self._counts[name]
            (busy, begun), epoch = self._writes.get(name, [0, 0]), self._epoch
        n = int(collection.count())
        with self._count_lock:
            unchanged = self._writes.get(name, [0, 0]) == [0, begun] and self._epoch == epoch
            if not busy and unchanged:
                self._counts[name] = n
        return n

    def forget(self) -> None:
        """Drop every kept count (after a write that may touch any collection: recovery)."""
        with self._count_lock:
            self._epoch += 1
            self._counts.clear()

    @contextmanager
    def writing(self, name: str) -> Iterator[None]:
        """Around every write to collection `name`: its count is asked again afterwards."""
        with self._count_lock:
            state = self._writes.setdefault(name, [0, 0])
            state[0], state[1] = state[0] + 1, state[1] + 1
            self._counts.pop(name, None)
        try:
            yield
        finally:
            with self._count_lock:
                state[0] -= 1
                state[1] += 1
                self._counts.pop(name, None)

    @classmethod
    def acquire(cls, path: Path) -> EmbeddedClient:
        path.mkdir(parents=True, exist_ok=True)
        real = os.path.realpath(path)
        with cls.guard:
            handle = cls.handles.get(real) or cls(real)
            cls.handles[real] = handle
            handle.refs += 1
            return handle

    def release(self) -> None:
        with self.guard:
            self.refs -= 1
            if self.refs > 0:
                return
            self.handles.pop(self.path, None)
            self.client.close()
            fcntl.flock(self.lock_file, fcntl.LOCK_UN)
            self.lock_file.close()
