"""CLI: `python -m ingest add FILES... | list | delete DOC... | query "..." [-k N] [--explain]`.

`--collection NAME` picks the owner's collection (default "default"); `--store DIR` the embedded
store (default data/chroma); CHROMA_HOST/CHROMA_PORT (or --host/--port) use a Chroma server.
`query --mode` picks dense, keyword, hybrid or hybrid+rerank (the default); `--explain` prints
each hit's ranks and scores. `list` and `delete` never load the embedding model.
Errors a user can fix are printed as one sentence, with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys

import offline

offline.apply()  # before any library reads them


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--collection", default="default", help="owner / collection name")
    parser.add_argument("--store", default=None, help="embedded store directory (data/chroma)")
    parser.add_argument("--host", default=None, help="Chroma server host (or CHROMA_HOST)")
    parser.add_argument(
        "--port", type=int, default=None, help="Chroma server port (or CHROMA_PORT)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="index files (PDF, .txt, .md)")
    add.add_argument("files", nargs="+")
    add.add_argument("--max-pages", type=int, default=1000)
    sub.add_parser("list", help="list indexed documents")
    delete = sub.add_parser("delete", help="remove documents by name or hash")
    delete.add_argument("documents", nargs="*")
    delete.add_argument("--all", action="store_true", help="drop the whole collection")
    query = sub.add_parser("query", help="search the indexed documents")
    query.add_argument("text")
    query.add_argument("-k", type=int, default=5)
    query.add_argument("--min-score", type=float, default=-1.0)
    query.add_argument("--mmr", action="store_true")
    query.add_argument(
        "--mode",
        choices=("dense", "keyword", "hybrid", "hybrid+rerank"),  # ingest.retrieve.MODES
        default="hybrid+rerank",
        help="ranking (default hybrid+rerank)",
    )
    query.add_argument("--reranker", default="coverage", help="hybrid+rerank's reranker")
    query.add_argument("--explain", action="store_true", help="why each hit ranked where it did")
    return parser


def _add(store, files: list[str], max_pages: int) -> int:
    from tqdm import tqdm

    from ingest.errors import IngestError
    from ingest.loaders import FileLimits

    failed = 0
    for path in files:
        with tqdm(total=0, desc=os.path.basename(path), unit="chunk", leave=True) as bar:

            def progress(done: int, total: int, bar=bar) -> None:
                bar.total = total
                bar.n = done
                bar.refresh()

            try:
                result = store.add_file(
                    path, limits=FileLimits(max_pages=max_pages), progress=progress
                )
            except IngestError as exc:
                failed += 1
                bar.close()
                print(f"error: {exc}", file=sys.stderr)
                continue
        print(result.message)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ingest.errors import IngestError
    from ingest.retrieve import retrieve
    from ingest.store import Store

    try:
        recreate = args.command == "delete" and args.all
        with Store(
            args.collection, path=args.store, host=args.host, port=args.port, recreate=recreate
        ) as store:
            if args.command == "add":
                return _add(store, args.files, args.max_pages)
            if args.command == "list":
                for doc in store.list_documents():
                    print(
                        f"{doc.doc_hash[:12]}  {doc.n_pages:5d} pages  "
                        f"{doc.n_chunks:6d} chunks  {doc.source}"
                    )
                return 0
            if args.command == "delete":
                if args.all:
                    print(f"Dropped collection {args.collection!r}.")
                    return 0
                if not args.documents:
                    print("error: name documents to delete, or pass --all", file=sys.stderr)
                    return 2
                for name in args.documents:
                    print(f"Deleted {name!r}: {store.delete(name)} chunks.")
                return 0
            hits = retrieve(
                store,
                args.text,
                args.k,
                min_score=args.min_score,
                mmr=args.mmr,
                mode=args.mode,
                reranker=args.reranker,
            )
            for rank, hit in enumerate(hits, start=1):
                snippet = " ".join(hit.text.split())[:160]
                print(f"{rank}. [{hit.score:.3f}] {hit.source} p.{hit.page}  {snippet}")
                if args.explain and hit.why is not None:
                    print(f"   why: {hit.why.describe()}")
            if not hits:
                print("No matching passages.")
            return 0
    except (IngestError, ValueError) as exc:  # ValueError: an unknown or unusable reranker
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
