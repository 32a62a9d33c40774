"""webapp.evidence: sentence splitting, the embedder's pick of the answering sentence, excerpts."""

from __future__ import annotations

import pytest

from core.generate.prompts import NOT_COVERED
from ingest import Embedder, EmbeddingReranker, Hit
from webapp.evidence import excerpt, find_evidence, not_covered, sentences, with_quote


@pytest.fixture(scope="module")
def encode():
    return Embedder(precision="fp32").encode


def hit(text: str, source: str = "manual.pdf", page: int = 1, score: float = 0.5) -> Hit:
    return Hit(text, source, page, score, f"{source}-{page}", "hash")


def test_sentences_split_on_stops_blank_lines_and_colons():
    text = (
        "Commands may extend over several lines. The backslash must be the last\ncharacter.\n\n"
        "Example:\nset title 'x'; plot sin(x)\nOK. e.g. this one stays whole."
    )
    assert sentences(text) == [
        "Commands may extend over several lines.",
        "The backslash must be the last character.",  # a line break inside a sentence is a space
        "set title 'x'; plot sin(x) OK. e.g. this one stays whole.",  # 'Example:' is one word
    ]
    assert sentences("Fig 3") == []  # fragments of under three words carry no evidence
    assert sentences("174 command-line options . . . . . . . . 12") == []  # a contents line
    assert sentences("Read the manual... It helps a lot.") == [
        "Read the manual...",
        "It helps a lot.",
    ]
    assert len(sentences("word " * 200)[0]) <= 322


def test_the_embedder_picks_the_answering_sentence_and_its_source(encode):
    hits = [
        hit("Gnuplot draws surfaces with splot. Colours come from the palette.", page=40),
        hit(
            "The terminal decides the output format. Commands may continue on the next line "
            "by ending the line with a backslash. Comments start with a hash sign.",
            page=22,
        ),
    ]
    [best] = find_evidence("How do I continue a command on the next line?", hits, encode)
    assert best.number == 2 and best.page == 22 and "backslash" in best.sentence
    assert best.score > 0  # cosine plus the keyword bonus
    assert find_evidence("anything", [hit("Fig 3")], encode) == []


def test_excerpt_keeps_the_evidence_sentence_within_the_cap():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    cut = excerpt(text, "Sentence number 30 is here.", 120)
    assert "Sentence number 30 is here." in cut and len(cut) <= 122
    assert excerpt(text, None, 60).startswith("Sentence number 0 is here.")


def test_quote_and_not_covered_answers_name_file_and_page(encode):
    hits = [hit("The cat is named Marmalade Tusk.", "keeper.pdf", 2)]
    [evidence] = find_evidence("What is the cat named?", hits, encode)
    quoted = with_quote("It is Marmalade Tusk [1].", [evidence])
    assert quoted.endswith('> "The cat is named Marmalade Tusk." [1] (keeper.pdf, page 2)')
    assert with_quote("text", []) == "text"
    assert not_covered(hits) == f"{NOT_COVERED} The closest passages: [1] keeper.pdf, page 2."


def test_the_embedding_reranker_scores_a_passage_by_its_best_sentence(encode):
    texts = [
        "Colours come from the palette. Surfaces are drawn with splot.",
        "Axes have tics. Set the x-axis label with set xlabel followed by the text.",
        "The terminal decides the output format of every plot.",
    ]
    scores = EmbeddingReranker(encode).score("How do I set the x-axis label?", texts)
    assert int(scores.argmax()) == 1
    # the best sentence decides: padding the passage with unrelated sentences changes nothing
    padded = texts[1] + " Bread rises overnight. The harbour is quiet in winter."
    again = EmbeddingReranker(encode).score("How do I set the x-axis label?", [padded])
    assert again[0] == pytest.approx(scores[1], abs=1e-5)
