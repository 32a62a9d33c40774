"""Answer-quality benchmark (issue 19): the app's own `ChatService` answers questions about two real
manuals nobody here wrote (Debian's gnuplot and Asymptote PDFs, `bench/rag_pdfs.py`), and each
answer is scored against the short keys in `bench/rag_questions.json`.

    .venv/bin/python bench/rag_answers.py --check-keys    # each key is on its stated page
    .venv/bin/python bench/rag_answers.py --limit 5 --split train
    .venv/bin/python bench/rag_answers.py --out data/bench/answers.jsonl    # all, both splits
    .venv/bin/python bench/rag_answers.py --rag-model off    # the default model, not smollm2-rag

Prints per split: answers right (a key in the answer), degenerate answers (a 4-word sequence 4+
times), right answers citing a source [n] that holds the key, "not in the documents" on the
unanswerable questions, retrieval hits (the right page among the sources), median seconds/answer.
Both manuals are indexed once into data/bench/rag_store and reused. Runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rag_pdfs import manuals  # noqa: E402

if TYPE_CHECKING:
    from webapp.chat import ChatService
    from webapp.documents import Library

QUESTIONS = ROOT / "bench" / "rag_questions.json"
STORE = ROOT / "data" / "bench" / "rag_store"
COLLECTION = "rag-bench"  # indexed once as the library's shared collection, so runs reuse it
SESSION = "rag-bench"
SPLITS = ("train", "test")
# An answer containing one of these says the documents do not answer the question.
NOT_COVERED = (
    "not in the document",
    "not in the provided",
    "not in the sources",
    "not mentioned",
    "not covered",
    "do not cover",
    "does not cover",
    "don't cover",
    "doesn't cover",
    "do not contain",
    "does not contain",
    "don't contain",
    "doesn't contain",
    "do not mention",
    "does not mention",
    "don't mention",
    "doesn't mention",
    "do not say",
    "does not say",
    "don't know",
    "do not know",
    "no information",
    "not enough information",
    "cannot answer",
    "can't answer",
    "unable to answer",
    "cannot find",
    "can't find",
    "could not find",
    "couldn't find",
)

FLAGS = ("right", "degenerate", "cites_key_source", "retrieval_hit", "not_covered")  # R D C H N
_FOLD = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "_": " ", "\u00a0": " "})
_LINE_HYPHEN = re.compile(r"(\w)-[ \t]*\n\s*(\w)")
_CITATION = re.compile(r"\[(\d+)\]")


def norm(text: str) -> str:
    """Case-, quote-, underscore- and whitespace-folded text for key matching."""
    return " ".join(unicodedata.normalize("NFKC", text).translate(_FOLD).lower().split())


def has_key(text: str, keys: Iterable[str]) -> bool:
    """Whether any key occurs in `text` (also with words hyphenated across lines rejoined)."""
    variants = {norm(text), norm(_LINE_HYPHEN.sub(r"\1\2", text))}
    return any(norm(key) in variant for key in keys for variant in variants)


def degenerate(text: str, n: int = 4, repeats: int = 4) -> bool:
    """True when some `n`-word sequence occurs `repeats` or more times: the answer loops."""
    words = norm(text).split()
    grams = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= repeats


def says_not_covered(text: str) -> bool:
    folded = norm(text)
    return any(phrase in folded for phrase in NOT_COVERED)


def citations(text: str) -> list[int]:
    """The source numbers an answer cites as [n], in order of first mention."""
    return list(dict.fromkeys(int(n) for n in _CITATION.findall(text)))


def load_questions(split: str = "all", limit: int | None = None) -> list[dict]:
    """The first `limit` questions of each split, the docs and the unanswerable set interleaved
    (so a quick or cut-short run samples all three)."""
    rows = json.loads(QUESTIONS.read_text())
    sizes, seen, rank = Counter(q["doc"] for q in rows), Counter(), {}
    for q in rows:
        seen[q["doc"]] += 1
        rank[q["id"]] = (seen[q["doc"]] / sizes[q["doc"]], str(q["doc"]))
    rows.sort(key=lambda q: rank[q["id"]])
    chosen = set()
    for name in SPLITS:
        if split in ("all", name):
            chosen |= {q["id"] for q in [q for q in rows if q["split"] == name][:limit]}
    return [q for q in rows if q["id"] in chosen]


# -- --check-keys ------------------------------------------------------------------------------


def page_texts() -> dict[str, list[str]]:
    """{file name: page texts}, read by the loader the store indexes with (same page numbers)."""
    from ingest import load_document

    texts = {}
    for name, path in manuals().items():
        document = load_document(path)
        pages = [""] * (len(document.pages) + len(document.empty_pages))
        for page in document.pages:
            pages[page.page_number - 1] = page.text
        texts[name] = pages
    return texts


def check_keys(questions: Sequence[dict]) -> list[str]:
    """Problems with the question set: keys off their page, absent facts present, bad splits."""
    texts, problems = page_texts(), []
    ids = Counter(q["id"] for q in questions)
    problems += [f"{i}: duplicate id" for i, n in ids.items() if n > 1]
    for q in questions:
        if q["answerable"]:
            pages = texts.get(q["doc"], [])
            if not 1 <= q["page"] <= len(pages):
                problems.append(f"{q['id']}: no page {q['page']} in {q['doc']}")
            elif not has_key(pages[q["page"] - 1], q["keys"]):
                problems.append(f"{q['id']}: no key of {q['keys']} on {q['doc']} p{q['page']}")
            if has_key(q["question"], q["keys"]):
                problems.append(f"{q['id']}: a key occurs in the question itself")
        else:
            for name, pages in texts.items():
                found = [w for w in q["absent"] if any(has_key(p, [w]) for p in pages)]
                if found:
                    problems.append(f"{q['id']}: {found} do occur in {name}")
    for group in ("gnuplot.pdf", "asymptote.pdf", None):
        members = [q for q in questions if q["doc"] == group]
        test = sum(q["split"] == "test" for q in members)
        if members and not len(members) // 3 <= test <= -(-len(members) // 3):
            problems.append(f"{group or 'unanswerable'}: {test} of {len(members)} in test")
    return problems


# -- answering and scoring ---------------------------------------------------------------------


def open_library() -> Library:
    """The app's `Library` over data/bench/rag_store, with both manuals indexed (once)."""
    from webapp.documents import Library

    library = Library(path=STORE, shared=COLLECTION)
    indexed = {row.source for row in library.documents(SESSION) if row.shared}
    for name, path in manuals().items():
        if name not in indexed:
            print(f"indexing {name} into {STORE} (once) ...", flush=True)
            # the call `Library.add_files` makes for an upload, on the shared collection
            result = library.shared.add_file(path.read_bytes(), name=name, limits=library.limits)
            print(result.message, flush=True)
    return library


def ask(service: ChatService, question: dict) -> dict:
    """One answer through `ChatService.reply` with the RAG template and app defaults, scored."""
    from webapp.chat import ChatInputError, ChatRequest

    start, final, error = time.perf_counter(), None, ""
    try:
        for reply in service.reply(
            ChatRequest(message=question["question"], template="rag"), SESSION
        ):
            final = reply
    except ChatInputError as err:
        error = str(err)
    seconds = time.perf_counter() - start
    text = final.text if final is not None else ""
    sources = list(final.sources) if final is not None else []
    cited = [n for n in citations(text) if 1 <= n <= len(sources)]
    keys = question["keys"]
    return {
        "id": question["id"],
        "split": question["split"],
        "answerable": question["answerable"],
        "question": question["question"],
        "answer": text,
        "error": error,
        "seconds": round(seconds, 2),
        "model": getattr(final, "model", ""),
        "finish_reason": getattr(final, "finish_reason", ""),
        "new_tokens": getattr(final, "new_tokens", 0),
        "right": bool(keys) and has_key(text, keys),
        "degenerate": degenerate(text),
        "cites_key_source": bool(keys) and any(has_key(sources[n - 1].text, keys) for n in cited),
        "retrieval_hit": any(
            s.source == question["doc"] and s.page == question["page"] for s in sources
        ),
        "not_covered": says_not_covered(text),
        "citations": cited,
        "best_score": round(sources[0].score, 3) if sources else None,
        "evidence": [
            {"number": e.number, "score": round(e.score, 3), "sentence": e.sentence}
            for e in getattr(final, "evidence", ())
        ],
        "sources": [
            {"source": s.source, "page": s.page, "score": round(s.score, 3)} for s in sources
        ],
    }


def ratio(hits: int, total: int) -> str:
    return f"{hits}/{total} = {hits / total:.2f}" if total else "0/0"


def summary(rows: Sequence[dict], split: str) -> str:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    right = [r for r in answerable if r["right"]]

    def count(group: Sequence[dict], flag: str) -> int:
        return sum(bool(r[flag]) for r in group)

    figures = [
        ("answers right", len(right), len(answerable)),
        ("degenerate answers", count(rows, "degenerate"), len(rows)),
        ("right answers citing key source", count(right, "cites_key_source"), len(right)),
        ('"not in the documents"', count(unanswerable, "not_covered"), len(unanswerable)),
        ("retrieval hit (page in sources)", count(answerable, "retrieval_hit"), len(answerable)),
    ]
    seconds = statistics.median(r["seconds"] for r in rows) if rows else 0.0
    lines = [f"split {split}: {len(answerable)} answerable, {len(unanswerable)} unanswerable"]
    lines += [f"  {label:34}{ratio(hits, total)}" for label, hits, total in figures]
    lines.append(f"  {'median seconds per answer':34}{seconds:.1f}")
    if count(rows, "error"):
        lines.append(f"  {'refused requests':34}{count(rows, 'error')}")
    return "\n".join(lines)


def run(questions: Sequence[dict], out: Path | None, rag_model: str | None = None) -> list[dict]:
    from webapp.chat import ChatRequest, ChatService
    from webapp.models import ModelRegistry

    service = ChatService(ModelRegistry(ROOT / "models", rag=rag_model), open_library())
    if questions:  # load the model and embedder before the clock starts
        service.prepare(ChatRequest(message=questions[0]["question"], template="rag"), SESSION)
    rows = []
    sink = out.open("w") if out else None
    try:
        for question in questions:
            row = ask(service, question)
            rows.append(row)
            flags = "".join(c for c, on in zip("RDCHN", [row[k] for k in FLAGS], strict=True) if on)
            head = f"{row['id']} {row['split']:5} {row['seconds']:5.1f}s {flags:5}"
            print(head, repr(row["answer"][:90]), file=sys.stderr, flush=True)
            if sink:
                sink.write(json.dumps(row, ensure_ascii=False) + "\n")
                sink.flush()
    finally:
        if sink:
            sink.close()
        service.library.close()
    return rows


def evidence_only(questions: Sequence[dict]) -> None:
    """Retrieval and evidence without generating (seconds, not minutes): how often the evidence
    sentence holds the key, and the best source score of answerable vs unanswerable questions,
    with the threshold that separates them best on these questions (tune on train only)."""
    from webapp.chat import ChatRequest, ChatService
    from webapp.models import ModelRegistry

    service = ChatService(ModelRegistry(ROOT / "models", rag="off"), open_library())
    rows = []
    for q in questions:
        prepared = service.prepare(ChatRequest(message=q["question"], template="rag"), SESSION)
        hits, evidence = prepared.sources, prepared.evidence
        rows.append(
            {
                **q,
                "hit": any(h.source == q["doc"] and h.page == q["page"] for h in hits),
                "first": bool(hits) and hits[0].source == q["doc"] and hits[0].page == q["page"],
                "evidence_key": bool(evidence) and has_key(evidence[0].sentence, q["keys"]),
                "best": hits[0].score if hits else 0.0,
            }
        )
    service.library.close()
    for split in SPLITS:
        group = [r for r in rows if r["split"] == split]
        answerable = [r for r in group if r["answerable"]]
        if not group:
            continue
        print(f"split {split}: {len(answerable)} answerable, {len(group) - len(answerable)} not")
        for label, flag in (("page in sources", "hit"), ("page first", "first")):
            print(f"  {label:34}{ratio(sum(r[flag] for r in answerable), len(answerable))}")
        good = sum(r["evidence_key"] for r in answerable)
        print(f"  {'evidence sentence holds the key':34}{ratio(good, len(answerable))}")
        cuts = sorted({round(r["best"], 2) for r in group})
        best_cut = max(cuts, key=lambda c: sum((r["best"] >= c) == r["answerable"] for r in group))
        kept = sum((r["best"] >= best_cut) == r["answerable"] for r in group)
        print(f"  {'best threshold on this split':34}{best_cut:.2f} ({kept}/{len(group)} right)")


def report(rows: Sequence[dict]) -> None:
    model = ", ".join(sorted({r.get("model", "") for r in rows} - {""})) or "default"
    print(f"model: {model}; {len(rows)} questions")
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        if chosen:
            print(summary(chosen, split))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("train", "test", "all"), default="all")
    parser.add_argument("--limit", type=int, default=None, help="first N questions per split")
    parser.add_argument(
        "--out", type=Path, default=None, help="every answer and its scores (jsonl)"
    )
    parser.add_argument("--check-keys", action="store_true", help="check the question set only")
    parser.add_argument(
        "--rag-model",
        default=os.environ.get("SCRATCHGPT_RAG_MODEL"),
        help="the app's SCRATCHGPT_RAG_MODEL: 'off' answers with the default model itself "
        "(default: models/smollm2-rag when `make rag-model` wrote it)",
    )
    parser.add_argument("--summary", type=Path, default=None, help="summarize a saved --out file")
    parser.add_argument(
        "--evidence-only", action="store_true", help="retrieval and evidence, no answers"
    )
    args = parser.parse_args(argv)
    if args.summary:
        rows = [json.loads(line) for line in args.summary.read_text().splitlines() if line]
        report(rows)
        return 0
    if args.check_keys:
        questions = load_questions()
        problems = check_keys(questions)
        print("\n".join(problems) or f"all {len(questions)} questions check out")
        return 1 if problems else 0
    questions = load_questions(args.split, args.limit)
    if args.evidence_only:
        evidence_only(questions)
        return 0
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    report(run(questions, args.out, args.rag_model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
