"""A separate process for persistence tests: `python -m tests.ingest._child CMD STORE OWNER ARG`."""

from __future__ import annotations

import json
import sys
import time

from ingest import Embedder, IngestError, KeywordIndex, Store, retrieve


def main() -> None:
    command, path, owner, arg = sys.argv[1:5]
    if command == "open":  # report how opening went, and how long it took
        start = time.monotonic()
        try:
            Store(owner, path=path).close()
            print(json.dumps({"ok": True}))
        except IngestError as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
            print(json.dumps({**out, "seconds": time.monotonic() - start}))
        return
    # the parent's embedder (tests/ingest/conftest.py): the same vectors, so the same scores
    store = Store(owner, path=path, write_batch=8, embedder=Embedder(precision="fp32"))
    if command == "query":
        hits = [[h.chunk_id, h.page, round(h.score, 5)] for h in retrieve(store, arg, k=5)]
        print(json.dumps(hits))
    elif command == "add":
        progress = lambda done, total: print(f"progress {done} {total}", flush=True)  # noqa: E731
        store.add_file(arg, progress=progress)
        print("done", flush=True)
    elif command in ("add-then-hang", "delete-then-hang"):
        # Chroma's write runs for real; the keyword index's write announces itself and waits
        # there for the parent's kill -9, the crash between the two writes
        def hang(*_: object) -> None:
            print("between writes", flush=True)
            time.sleep(600)

        KeywordIndex.add = KeywordIndex.remove = hang  # type: ignore[method-assign]
        if command == "add-then-hang":
            store.add_file(arg)
        else:
            store.delete(arg)
    store.close()


if __name__ == "__main__":
    main()
