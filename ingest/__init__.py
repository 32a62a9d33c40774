"""Documents -> chunks -> embeddings -> Chroma -> retrieval with page-level citations.

Nothing heavy happens at import: the embedder loads when a `Store` or `Embedder` is created.
"""

from ingest.chunking import Chunk, chunk_document, chunk_pages, load_tokenizer
from ingest.embeddings import Embedder
from ingest.errors import (
    CorruptPdfError,
    DocumentNotFoundError,
    EmbedderMismatchError,
    EmptyFileError,
    EncryptedPdfError,
    FileTooLargeError,
    IngestError,
    NotAPdfError,
    NoTextLayerError,
    PageLimitError,
    PdfResourceError,
    StoreLockedError,
    StoreUnavailableError,
    UnsupportedTypeError,
)
from ingest.loaders import Document, FileLimits, Page, load_document
from ingest.retrieve import Hit, retrieve
from ingest.store import AddResult, DocumentInfo, Store, collection_name

__all__ = [
    "AddResult",
    "Chunk",
    "CorruptPdfError",
    "Document",
    "DocumentInfo",
    "DocumentNotFoundError",
    "Embedder",
    "EmbedderMismatchError",
    "EmptyFileError",
    "EncryptedPdfError",
    "FileLimits",
    "FileTooLargeError",
    "Hit",
    "IngestError",
    "NoTextLayerError",
    "NotAPdfError",
    "Page",
    "PageLimitError",
    "PdfResourceError",
    "Store",
    "StoreLockedError",
    "StoreUnavailableError",
    "UnsupportedTypeError",
    "chunk_document",
    "chunk_pages",
    "collection_name",
    "load_document",
    "load_tokenizer",
    "retrieve",
]
