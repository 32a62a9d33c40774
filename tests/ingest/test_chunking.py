"""Chunking: token bounds from the embedder's own tokenizer, sentence cuts, overlap, stable ids."""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ingest import Page, chunk_pages, load_tokenizer

SENTENCES = [
    f"Sentence number {i} talks about the {w} of the northern harbour."
    for i, w in enumerate(
        ["tides", "boats", "gulls", "nets", "storms", "lamps", "ropes", "fish", "wind", "rocks"] * 8
    )
]


def _page(text: str, number: int = 1) -> Page:
    return Page(text, "doc.txt", number)


def test_chunks_fit_the_window_and_cut_on_sentences():
    tokenizer = load_tokenizer()
    text = " ".join(SENTENCES[:40]) + "\n\n" + " ".join(SENTENCES[40:])
    chunks = chunk_pages([_page(text)], "h" * 64, max_tokens=64, overlap_tokens=16)
    assert len(chunks) > 5
    for chunk in chunks:
        n = len(tokenizer.encode(chunk.text, add_special_tokens=False).ids)
        assert n <= 64 and n == chunk.n_tokens
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text.startswith("Sentence") and chunk.text.endswith(".")
    # Every sentence is in some chunk, and neighbours overlap by a whole sentence.
    assert all(any(s in c.text for c in chunks) for s in SENTENCES)
    for left, right in itertools.pairwise(chunks):
        assert right.start < left.end


def test_default_chunks_fit_the_embedders_256_token_window():
    tokenizer = load_tokenizer()
    text = " ".join(SENTENCES) * 3
    for chunk in chunk_pages([_page(text)], "h" * 64):
        assert len(tokenizer.encode(chunk.text).ids) <= 256  # with [CLS] and [SEP]


def test_a_sentence_longer_than_the_window_is_cut_at_word_starts():
    words = [f"word{i}" for i in range(600)]
    text = " ".join(words)  # one "sentence", no punctuation
    chunks = chunk_pages([_page(text)], "h" * 64, max_tokens=50, overlap_tokens=0)
    assert len(chunks) > 5
    rebuilt = " ".join(c.text for c in chunks).split()
    assert rebuilt == words  # no word split or lost
    assert all(c.n_tokens <= 50 for c in chunks)


def test_a_word_longer_than_the_window_is_cut_into_full_windows():
    blob = "qzxv" * 24  # one "word" of 96 WordPiece tokens (a hash, a chemical name)
    chunks = chunk_pages([_page(blob)], "h" * 64, max_tokens=16, overlap_tokens=0)
    assert "".join(c.text for c in chunks) == blob
    assert [c.n_tokens for c in chunks] == [16] * 6


def test_ids_are_stable_and_metadata_carries_the_citation():
    pages = [_page(" ".join(SENTENCES[:20]), 3), _page(" ".join(SENTENCES[20:30]), 7)]
    first = chunk_pages(pages, "a" * 64, max_tokens=64)
    again = chunk_pages(pages, "a" * 64, max_tokens=64)
    other_doc = chunk_pages(pages, "b" * 64, max_tokens=64)
    assert [c.id for c in first] == [c.id for c in again]
    assert len({c.id for c in first}) == len(first)
    assert not {c.id for c in first} & {c.id for c in other_doc}
    assert {c.page for c in first} == {3, 7}
    meta = first[0].metadata()
    assert meta == {
        "source": "doc.txt",
        "doc_hash": "a" * 64,
        "page": 3,
        "start": 0,
        "end": first[0].end,
        "n_tokens": first[0].n_tokens,
    }


TOKENIZER = load_tokenizer()


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab .\n!?é"), min_size=1, max_size=400))
@example("?" * 17)  # one punctuation run over the window: cut between its marks
@example("b" * 200)  # one word over the window: cut inside it
def test_any_text_chunks_into_in_bounds_spans(text):
    chunks = chunk_pages([_page(text)], "h" * 64, TOKENIZER, max_tokens=16, overlap_tokens=4)
    for chunk in chunks:
        assert 0 <= chunk.start < chunk.end <= len(text)
        assert chunk.text == text[chunk.start : chunk.end] and chunk.text.strip()
        assert chunk.n_tokens <= 16
    # nothing is lost, and a chunk edge cuts a word of the tokenizer's (a run of letters, or one
    # punctuation mark) only where that word alone is over the window ('??...?' is 17 words)
    for word, (start, end) in TOKENIZER.pre_tokenizer.pre_tokenize_str(text):
        if len(TOKENIZER.encode(word, add_special_tokens=False).ids) <= 16:
            assert any(c.start <= start and end <= c.end for c in chunks), (word, start)
        else:
            assert all(any(c.start <= i < c.end for c in chunks) for i in range(start, end))
