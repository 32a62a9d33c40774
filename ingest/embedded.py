"""The embedded Chroma store's client: one `PersistentClient` per directory per process, guarded by
an fcntl lock so a second process gets `StoreLockedError` (naming the holder's pid), not a hang."""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

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
