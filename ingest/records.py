"""What the store reports to its callers (CLI, app): the result of adding a document, and an
indexed document as listed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AddResult:
    """What `Store.add_document` did, with a sentence for the user."""

    source: str
    doc_hash: str
    added: bool
    n_pages: int
    n_chunks: int
    empty_pages: list[int]
    message: str


@dataclass(frozen=True)
class DocumentInfo:
    """One indexed document, as `Store.list_documents` reports it."""

    source: str
    doc_hash: str
    n_pages: int
    n_chunks: int
