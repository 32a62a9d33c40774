"""Uploads (bytes or a path) -> `Document` of numbered `Page`s; a bad input raises a typed error.

The type is decided by content (magic bytes) and by name. PDFs are parsed by pypdf in a child
process (`_pdf_worker.py`) under a wall-clock limit, an address-space limit and a page cap,
because malformed PDFs can hang or balloon the parser. Text is UTF-8 (with or without BOM) or
UTF-16 with a BOM; other bytes are decoded as cp1252 with a warning.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from ingest.errors import (
    CorruptPdfError,
    EmptyFileError,
    EncryptedPdfError,
    FileTooLargeError,
    NotAPdfError,
    NoTextLayerError,
    PageLimitError,
    PdfResourceError,
    UnsupportedTypeError,
)

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".text", ""}
_WORKER = Path(__file__).with_name("_pdf_worker.py")
# Magic bytes of common binaries that users rename by mistake (or on purpose).
_BINARY_MAGIC = {
    b"\x7fELF": "a Linux executable",
    b"MZ": "a Windows executable",
    b"\xcf\xfa\xed\xfe": "a macOS executable",
    b"\xca\xfe\xba\xbe": "a macOS executable",
    b"PK\x03\x04": "a ZIP archive (or a Word/Excel file)",
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"\x1f\x8b": "a gzip archive",
    b"\xd0\xcf\x11\xe0": "an old Office document",
}


@dataclass(frozen=True)
class FileLimits:
    """Bounds on one upload; PDF parsing runs in a child process held to these."""

    max_bytes: int = 50 * 1024 * 1024
    max_pages: int = 1000
    timeout_s: float = 60.0
    memory_bytes: int = 1024 * 1024 * 1024


@dataclass(frozen=True)
class Page:
    """The text of one page; page numbers start at 1."""

    text: str
    source: str
    page_number: int


@dataclass
class Document:
    """A loaded upload: its safe display name, content hash, pages, and what was skipped."""

    source: str
    doc_hash: str
    kind: str  # "pdf" or "text"
    pages: list[Page]
    empty_pages: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def safe_name(name: str) -> str:
    """The base name only, without directories or control characters: `../../x.pdf` -> `x.pdf`."""
    base = PureWindowsPath(PurePosixPath(name).name).name
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:255] or "document"


def load_document(
    source: str | Path | bytes, *, name: str | None = None, limits: FileLimits | None = None
) -> Document:
    """Load a path, or raw bytes with their upload `name`, into a `Document`."""
    limits = limits or FileLimits()
    if isinstance(source, bytes):
        data, display = source, safe_name(name or "upload.txt")
    else:
        path = Path(source)
        display = safe_name(name or path.name)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise UnsupportedTypeError(f"Cannot read {display!r}: {exc.strerror}.") from exc
        if not path.is_file():
            raise UnsupportedTypeError(
                f"{display!r} is not a regular file; upload a PDF, .txt or .md file."
            )
        _check_size(size, display, limits)
        data = path.read_bytes()
    _check_size(len(data), display, limits)
    if not data.strip():
        raise EmptyFileError(f"{display!r} is empty; upload a file that contains text.")
    doc_hash = hashlib.sha256(data).hexdigest()
    suffix = Path(display).suffix.lower()
    if _is_pdf(data):
        return _load_pdf(data, display, doc_hash, limits)
    if suffix == ".pdf":
        raise NotAPdfError(
            f"{display!r} is named .pdf but is not a PDF; "
            "export it again as PDF or upload it as text."
        )
    for magic, what in _BINARY_MAGIC.items():
        if data.startswith(magic):
            raise UnsupportedTypeError(
                f"{display!r} is {what}, not text; upload a PDF, .txt or .md file."
            )
    if suffix not in TEXT_SUFFIXES:
        raise UnsupportedTypeError(
            f"{display!r} has an unsupported type ({suffix}); upload a PDF, .txt or .md file."
        )
    return _load_text(data, display, doc_hash)


def _check_size(size: int, display: str, limits: FileLimits) -> None:
    if size > limits.max_bytes:
        raise FileTooLargeError(
            f"{display!r} is {size / 1e6:.1f} MB, over the {limits.max_bytes / 1e6:.0f} MB limit; "
            "split it into smaller files."
        )


def _is_pdf(data: bytes) -> bool:
    return b"%PDF-" in data[:1024]  # the spec allows junk before the header


def decode_text(data: bytes, display: str = "file") -> tuple[str, list[str]]:
    """Bytes -> (text, warnings): BOMs honoured, UTF-8 preferred, cp1252 as the fallback."""
    warnings: list[str] = []
    if data.startswith(b"\xef\xbb\xbf"):
        text = data[3:].decode("utf-8", errors="replace")
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = data.decode("utf-16", errors="replace")
    else:
        if data.count(b"\x00") > max(8, len(data) // 10):
            raise UnsupportedTypeError(
                f"{display!r} looks binary (many NUL bytes); if it is UTF-16 text, "
                "save it as UTF-8 and upload it again."
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("cp1252", errors="replace")
            warnings.append(f"{display!r} is not UTF-8; it was read as Windows-1252 (cp1252).")
    if "\x00" in text:
        text = text.replace("\x00", "")
        warnings.append(f"{display!r} contained NUL bytes; they were removed.")
    return text.replace("\r\n", "\n").replace("\r", "\n"), warnings


def _load_text(data: bytes, display: str, doc_hash: str) -> Document:
    text, warnings = decode_text(data, display)
    # A form feed is a page break in plain text; it gives long text files page numbers.
    parts = text.split("\f")
    pages = [Page(p, display, i) for i, p in enumerate(parts, start=1) if p.strip()]
    empty = [i for i, p in enumerate(parts, start=1) if not p.strip()]
    if not pages:
        raise EmptyFileError(f"{display!r} contains no text; upload a file that contains text.")
    return Document(display, doc_hash, "text", pages, empty, warnings)


def extract_pdf_pages(data: bytes, display: str, limits: FileLimits) -> list[str]:
    """Page texts from PDF bytes, parsed in a child process under `limits`."""
    cmd = [sys.executable, str(_WORKER), str(limits.max_pages), str(limits.memory_bytes)]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, timeout=limits.timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PdfResourceError(
            f"Reading {display!r} took longer than {limits.timeout_s:.0f} s, so it was stopped; "
            "the PDF may be malformed: print it to a new PDF and upload that."
        ) from exc
    try:
        result = json.loads(proc.stdout or b"null")
    except ValueError:
        result = None
    if not isinstance(result, dict):
        raise PdfResourceError(
            f"Reading {display!r} needed more than {limits.memory_bytes / 2**20:.0f} MB of memory "
            f"or crashed the parser (exit {proc.returncode}); "
            "print it to a new PDF and upload that."
        )
    error = result.get("error")
    if error == "encrypted":
        raise EncryptedPdfError(
            f"{display!r} is password-protected; "
            "remove the password (e.g. print to PDF) and upload it again."
        )
    if error == "corrupt":
        raise CorruptPdfError(
            f"{display!r} is truncated or damaged and cannot be read; download or export it again."
        )
    if error == "pages":
        raise PageLimitError(
            f"{display!r} has {result['n_pages']} pages, over the {limits.max_pages}-page limit; "
            "split it into smaller PDFs."
        )
    if error == "resource":
        raise PdfResourceError(
            f"{display!r} expands to more data than allowed "
            "(a compression bomb or a malformed PDF); print it to a new PDF and upload that."
        )
    return [str(t) for t in result["pages"]]


def _load_pdf(data: bytes, display: str, doc_hash: str, limits: FileLimits) -> Document:
    texts = extract_pdf_pages(data, display, limits)
    pages = [Page(t, display, i) for i, t in enumerate(texts, start=1) if t.strip()]
    empty = [i for i, t in enumerate(texts, start=1) if not t.strip()]
    if not pages:
        raise NoTextLayerError(
            f"{display!r} has no text layer on {_page_list(empty)} (scanned images?); "
            "OCR is not offered: run it through an OCR tool first and upload the result.",
            empty,
        )
    warnings = []
    if empty:
        warnings.append(f"{display!r}: no text on {_page_list(empty)}; those pages were skipped.")
    return Document(display, doc_hash, "pdf", pages, empty, warnings)


def _page_list(pages: list[int]) -> str:
    shown = ", ".join(str(p) for p in pages[:20])
    more = f" and {len(pages) - 20} more" if len(pages) > 20 else ""
    return f"page{'s' if len(pages) > 1 else ''} {shown}{more}"
