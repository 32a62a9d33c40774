"""The grounded-QA rows of `make rag-model` (recipes/grounded.py): the app's exact RAG prompt, an
answer that names the right entry and cites the source holding it, unanswerable rows without
it, and nothing from the benchmark's manuals."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.generate import prompts
from recipes import grounded

ROOT = Path(__file__).resolve().parents[2]
BENCH_QUESTIONS = ROOT / "bench" / "rag_questions.json"


@pytest.fixture(scope="module")
def rows():
    return grounded.build_rows(300, seed=3)


def sources_of(content: str) -> dict[int, str]:
    """{n: text} of the numbered sources in a RAG prompt."""
    block = content.split("\n\nSources:\n", 1)[1]
    found = re.findall(r"^\[(\d+)\] \([^)]*\)\n(.*)$", block, re.M)
    return {int(n): text for n, text in found}


def test_rows_are_the_apps_rag_prompt_with_a_cited_answer_naming_the_entry(rows):
    answerable = [r for r in rows if r["answer"] != prompts.NOT_COVERED]
    assert 0.8 < len(answerable) / len(rows) < 0.95
    for row in rows:
        system, user, assistant = row["messages"]
        assert system == {"role": "system", "content": prompts.DEFAULT_SYSTEM}
        assert user["content"].startswith(f"Question: {row['question']}\n\nSources:\n[1] (python-")
        assert user["content"].endswith(f"{prompts.RAG_INSTRUCTION}\n\nQuestion: {row['question']}")
        assert assistant == {"role": "assistant", "content": row["answer"]}
        assert len(user["content"]) <= 3000
    for row in answerable:
        sources = sources_of(row["messages"][1]["content"])
        [cited] = [int(n) for n in re.findall(r"\[(\d+)\]", row["answer"])]
        name = row["name"]
        assert name in row["answer"] and name in sources[cited], row["answer"]
        if not row["question"].startswith("What does"):
            # the answer comes from the sources, not the question
            assert not re.search(rf"\b{re.escape(name)}\b", row["question"])
    assert {r["answer"].split("[")[-1] for r in answerable} > {"1].", "2].", "3]."}


def test_unanswerable_rows_hold_no_source_naming_the_entry(rows):
    unanswerable = [r for r in rows if r["answer"] == prompts.NOT_COVERED]
    assert unanswerable
    for row in unanswerable:
        texts = sources_of(row["messages"][1]["content"]).values()
        assert all(row["name"] not in text for text in texts)


def test_rows_are_seeded_and_the_same_in_every_process(rows):
    assert grounded.build_rows(20, seed=4) != rows[:20]
    code = (
        "import json; from recipes import grounded; print(json.dumps(grounded.build_rows(20, 3)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(done.stdout) == rows[:20]  # no memory address or hash order leaks in


def test_question_forms_and_verbs():
    assert grounded.first_sentence("Return the cosine of x (measured in radians).") == (
        "return",
        "the cosine of x (measured in radians)",
    )
    assert grounded.first_sentence("S.split(sep=None) -> list\n\nSplits a string into words.")
    assert grounded.first_sentence("A class that does things.") is None  # no verb
    assert [grounded.third_person(v) for v in ("match", "copy", "say", "get")] == [
        "matches",
        "copies",
        "says",
        "gets",
    ]


def test_no_row_shares_a_passage_with_the_benchmark(rows):
    questions = json.loads(BENCH_QUESTIONS.read_text())
    texts = [q["question"] for q in questions] + [" ".join(q.get("keys", [])) for q in questions]
    assert grounded.check_disjoint(rows, texts) == []
    assert all("gnuplot" not in str(r) and "asymptote" not in str(r).lower() for r in rows)
    # the check itself finds a benchmark question planted in a row
    planted = json.loads(json.dumps(rows[0]))
    planted["messages"][1]["content"] += " " + questions[5]["question"]
    assert grounded.check_disjoint([planted], texts) == [rows[0]["question"]]


@pytest.mark.slow
def test_no_row_shares_a_passage_with_the_benchmark_manuals(rows):
    """Against every page of the gnuplot and Asymptote manuals (fetched like the bench does)."""
    sys.path.insert(0, str(ROOT))
    from bench.rag_answers import page_texts

    pages = [page for texts in page_texts().values() for page in texts]
    assert len(pages) > 400
    assert grounded.check_disjoint(grounded.build_rows(2400, seed=0), pages) == []
