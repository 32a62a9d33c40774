"""Typed errors a user can meet while adding, listing or searching documents.

Every message is a sentence a person can act on; the UI and the CLI show `str(error)` as is.
"""

from __future__ import annotations


class IngestError(Exception):
    """Base class: anything in `ingest` that a user can cause or fix."""


class EmptyFileError(IngestError):
    """The upload has no bytes, or only whitespace."""


class UnsupportedTypeError(IngestError):
    """Neither a PDF nor a text/Markdown file, judged by content and name."""


class FileTooLargeError(IngestError):
    """The upload is over the configured size limit."""


class NotAPdfError(IngestError):
    """Named .pdf, but the bytes are not a PDF."""


class CorruptPdfError(IngestError):
    """A PDF that is truncated or damaged beyond what pypdf can read."""


class EncryptedPdfError(IngestError):
    """A password-protected PDF; we never guess passwords."""


class NoTextLayerError(IngestError):
    """A PDF whose pages carry no extractable text (scanned images); OCR is not offered."""

    def __init__(self, message: str, empty_pages: list[int]) -> None:
        super().__init__(message)
        self.empty_pages = empty_pages


class PageLimitError(IngestError):
    """A PDF with more pages than the configured cap."""


class PdfResourceError(IngestError):
    """Parsing the PDF ran over the time or memory limit (malformed or hostile file)."""


class EmbedderMismatchError(IngestError):
    """A collection indexed with another embedding model or dimension."""


class StoreLockedError(IngestError):
    """Another process holds the embedded Chroma store."""


class StoreUnavailableError(IngestError):
    """The Chroma server cannot be reached, or the store failed underneath us."""


class DocumentNotFoundError(IngestError):
    """Delete or lookup of a document that is not in the collection."""


class QueryError(IngestError):
    """A search query that cannot be searched: empty, too long, or without a word in it."""
