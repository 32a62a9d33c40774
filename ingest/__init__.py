"""Documents -> chunks -> embeddings -> Chroma -> retrieval with page-level citations.

Nothing heavy happens at import: the embedder loads on first use (an `Embedder`, or a `Store`
that embeds), so listing and deleting documents never load it.
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
    QueryError,
    StoreLockedError,
    StoreUnavailableError,
    UnsupportedTypeError,
)
from ingest.keyword_index import KeywordIndex, tokenize
from ingest.loaders import Document, FileLimits, Page, load_document
from ingest.records import AddResult, DocumentInfo
from ingest.rerank import (
    CoverageReranker,
    CrossEncoderReranker,
    EmbeddingReranker,
    Reranker,
    get_reranker,
    register_reranker,
    reranker_names,
)
from ingest.retrieve import DEFAULT_MODE, MODES, Hit, Why, check_query, retrieve
from ingest.store import Store, collection_name

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "AddResult",
    "Chunk",
    "CorruptPdfError",
    "CoverageReranker",
    "CrossEncoderReranker",
    "Document",
    "DocumentInfo",
    "DocumentNotFoundError",
    "Embedder",
    "EmbedderMismatchError",
    "EmbeddingReranker",
    "EmptyFileError",
    "EncryptedPdfError",
    "FileLimits",
    "FileTooLargeError",
    "Hit",
    "IngestError",
    "KeywordIndex",
    "NoTextLayerError",
    "NotAPdfError",
    "Page",
    "PageLimitError",
    "PdfResourceError",
    "QueryError",
    "Reranker",
    "Store",
    "StoreLockedError",
    "StoreUnavailableError",
    "UnsupportedTypeError",
    "Why",
    "check_query",
    "chunk_document",
    "chunk_pages",
    "collection_name",
    "get_reranker",
    "load_document",
    "load_tokenizer",
    "register_reranker",
    "reranker_names",
    "retrieve",
    "tokenize",
]
