"""Grounded-QA rows for `make rag-model`: (question, numbered sources, answer) in the app's exact
RAG prompt, built from Python's own documentation, never from the benchmark's manuals.

Documents: the docstrings of Python's standard library (`inspect`), one "page" per run of
entries of one module, each entry one line: `name(signature) First paragraph of its docstring.`
A question asks for the entry whose docstring's first sentence says what it does ("Which function
returns the current working directory?"), or what a named entry does. Each row holds that page
among distractor pages (of the same module first: close in topic, as retrieval returns them),
at a random position, usually with the app's "most relevant sentence" line (sometimes a wrong
one, sometimes none); the answer names the entry and cites its source. Unanswerable rows hold
only distractors and answer `NOT_COVERED`.

The benchmark (bench/rag_answers.py) asks about gnuplot and Asymptote; nothing here reads a PDF,
and `check_disjoint` proves that no row shares a passage with the benchmark's pages.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.generate import prompts
from core.generate.prompts import NOT_COVERED, Source

# Modules whose docstrings read like a manual: what a command or function does, in a sentence.
_MODULE_NAMES = (
    "abc argparse array ast asyncio base64 binascii bisect builtins bz2 calendar cmath codecs "
    "collections colorsys configparser contextlib copy csv datetime decimal difflib dis email "
    "enum filecmp fnmatch fractions ftplib functools gc getopt gettext glob gzip hashlib heapq "
    "hmac html html.parser http.client http.cookies imaplib inspect io ipaddress itertools json "
    "keyword linecache locale logging lzma mailbox marshal math mimetypes operator os os.path "
    "pathlib pickle pkgutil platform plistlib poplib pprint queue quopri random re reprlib sched "
    "secrets select selectors shelve shlex shutil signal smtplib socket sqlite3 ssl stat "
    "statistics string struct subprocess sys sysconfig tarfile tempfile textwrap threading time "
    "timeit token tokenize traceback types typing unicodedata urllib.parse urllib.request uuid "
    "warnings weakref xml.dom.minidom xml.etree.ElementTree zipfile zlib"
)
MODULES = tuple(_MODULE_NAMES.split())

# Imperative verbs a docstring's first sentence starts with ("Return the ..."); other openings
# ("A class that ...", "Deprecated.") make no question.
_VERB_NAMES = (
    "add apply build calculate call change check choose clear close compare compile compress "
    "compute convert copy count create decode decompress delete detect encode escape "
    "evaluate execute extract fetch find flush format generate get initialize insert join "
    "list load lock make match merge move normalize open pack parse print put quote raise "
    "read receive register release remove rename replace reset resolve return reverse run "
    "save search send serialize set shuffle sort split start stop strip test translate "
    "truncate unpack unquote update validate wait walk wrap write"
)
VERBS = frozenset(_VERB_NAMES.split())
SIGNATURE_LINE = re.compile(r"^\s*[\w.]+\(.*\)\s*(->.*)?$|->")
MIN_WORDS, MAX_WORDS = 3, 24  # the rest of the first sentence, after its verb
ENTRY_CHARS = 260  # one entry's line at most: a page holds two or three entries
PAGE_CHARS = 520
QUESTIONS = ("which", "how", "what")


class GroundedDataError(RuntimeError):
    """Rows cannot be built as asked; the message says what to change."""


@dataclass(frozen=True)
class Entry:
    """One documented name: `line` is how its page shows it; `verb rest` its first sentence."""

    module: str
    name: str
    kind: str  # function, method or class
    line: str
    verb: str
    rest: str
    sentence: str  # the name and the first sentence: what the app's evidence finder quotes


@dataclass(frozen=True)
class Page:
    """A run of entries of one module, as one retrieved source."""

    module: str
    number: int
    text: str
    names: tuple[str, ...]


def third_person(verb: str) -> str:
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and verb[-2:-1] not in tuple("aeiou"):
        return verb[:-1] + "ies"
    return verb + "s"


def base_verb(word: str) -> str | None:
    """'Return' or 'Returns' -> 'return'; None for a word that is no verb we know."""
    word = word.lower()
    for candidate in (word, word[:-1], word[:-2], word[:-3] + "y"):
        if candidate in VERBS and (candidate == word or third_person(candidate) == word):
            return candidate
    return None


def first_sentence(doc: str) -> tuple[str, str] | None:
    """(base verb, rest) of a docstring's first prose sentence, when it opens with a verb."""
    for paragraph in doc.split("\n\n"):
        if SIGNATURE_LINE.search(paragraph.splitlines()[0] if paragraph.strip() else "->"):
            continue  # "S.split(sep=None) -> list": C functions' docstrings open with one
        text = " ".join(paragraph.split())
        sentence = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")
        verb, _, rest = sentence.partition(" ")
        base = base_verb(verb)
        words = rest.split()
        if base is None or not MIN_WORDS <= len(words) <= MAX_WORDS:
            return None
        if any(ch in rest for ch in "`*>:") or rest.endswith(","):
            return None  # reST markup, doctest output, or a sentence cut mid-way
        return base, rest
    return None


def _signature(obj: Any) -> str:
    """`(a, b=1)`; a default shown as `<object object at 0x7f...>` loses its address, which
    changes from run to run (the same seed must write the same rows)."""
    try:
        return re.sub(r" at 0x[0-9a-f]+", "", str(inspect.signature(obj)))
    except (TypeError, ValueError):
        return "()"


def _documented(module: Any) -> Iterable[tuple[str, str, Any]]:
    """(qualified name, kind, object) of a module's public functions, classes and methods."""
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj):
            yield f"{module.__name__}.{attr}", "class", obj
            for method, member in sorted(vars(obj).items()):
                if not method.startswith("_") and callable(member):
                    yield f"{module.__name__}.{attr}.{method}", "method", member
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            yield f"{module.__name__}.{attr}", "function", obj


def entries(modules: Sequence[str] = MODULES) -> list[Entry]:
    """Every documented name of `modules` whose docstring opens with a usable sentence."""
    with warnings.catch_warnings():  # typing.io and friends warn when their docs are read
        warnings.simplefilter("ignore", DeprecationWarning)
        return _entries(modules)


def _entries(modules: Sequence[str]) -> list[Entry]:
    found: list[Entry] = []
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # a module this Python lacks (e.g. built without ssl) gives no rows
        for name, kind, obj in _documented(module):
            doc = inspect.getdoc(obj) or ""
            sentence = first_sentence(doc)
            if sentence is None:
                continue
            short = name.removeprefix("builtins.")
            body = " ".join(doc.split("\n\n")[0].split())
            head = f"{short}{_signature(obj) if kind != 'class' else ''}"
            line = f"{head} {body}"
            if len(line) > ENTRY_CHARS:
                line = line[:ENTRY_CHARS].rsplit(" ", 1)[0] + " ..."
            verb, rest = sentence
            said = f"{head} {body.split(' ', 1)[0]} {rest}."
            found.append(Entry(module_name, short, kind, line, verb, rest, said))
    return found


def pages(all_entries: Sequence[Entry]) -> list[Page]:
    """Each module's entries in order, cut into pages of at most `PAGE_CHARS`."""
    out: list[Page] = []
    by_module: dict[str, list[Entry]] = {}
    for entry in all_entries:
        by_module.setdefault(entry.module, []).append(entry)
    for module, group in by_module.items():
        current: list[Entry] = []
        for entry in [*group, None]:
            size = sum(len(e.line) + 1 for e in current)
            full = current and (entry is None or size + len(entry.line) > PAGE_CHARS)
            if full:
                number = sum(p.module == module for p in out) + 1
                text = " ".join(e.line for e in current)
                out.append(Page(module, number, text, tuple(e.name for e in current)))
                current = []
            if entry is not None:
                current.append(entry)
    return out


def question_and_answer(entry: Entry, style: str, n: int) -> tuple[str, str]:
    """A question whose answer is `entry`, in one of `QUESTIONS`' styles, and the answer that
    names it and cites source [n]."""
    does = f"{third_person(entry.verb)} {entry.rest}"
    if style == "which":
        return f"Which {entry.kind} {does}?", f"{entry.name} {does} [{n}]."
    if style == "how":
        verb = "get" if entry.verb == "return" else entry.verb  # "How do I return the ...?"
        return f"How do I {verb} {entry.rest}?", f"Use {entry.name}, which {does} [{n}]."
    return f"What does {entry.name} do?", f"{entry.name} {does} [{n}]."


def build_rows(
    n_rows: int,
    seed: int,
    *,
    modules: Sequence[str] = MODULES,
    n_sources: tuple[int, ...] = (4, 4, 4, 3, 2),
    unanswerable: float = 0.12,
    gold_first: float = 0.5,
    quote_right: float = 0.7,
    quote_wrong: float = 0.15,
    system: str = prompts.DEFAULT_SYSTEM,
    max_chars: int = 3000,
) -> list[dict[str, Any]]:
    """`n_rows` chat rows ({"messages": system, user = the RAG prompt, assistant = answer}),
    seeded; each row also keeps its question, entry name, answer and sources' labels. A
    prompt over `max_chars` (~750 tokens) is drawn again, so every row fits a 1,024 block."""
    all_entries = entries(modules)
    all_pages = pages(all_entries)
    if len(all_pages) < 8:
        raise GroundedDataError(f"only {len(all_pages)} pages of documentation in {modules}.")
    page_of = {name: page for page in all_pages for name in page.names}
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    while len(rows) < n_rows:
        entry = rng.choice(all_entries)
        gold = page_of[entry.name]
        answerable = rng.random() >= unanswerable
        k = rng.choice(n_sources)
        # distractors never mention the entry; half of them come from its own module
        others = [p for p in all_pages if p is not gold and entry.name not in p.text]
        near = [p for p in others if p.module == entry.module]
        picked = rng.sample(near, min(len(near), (k - 1) // 2 + (0 if answerable else 1)))
        far = [p for p in others if p not in picked]
        picked += rng.sample(far, k - len(picked) - (1 if answerable else 0))
        if answerable:
            at = 0 if rng.random() < gold_first else rng.randrange(k)
            picked.insert(at, gold)
        sources = [
            Source(i, p.text, f"python-{p.module}.txt", p.number) for i, p in enumerate(picked, 1)
        ]
        n = picked.index(gold) + 1 if answerable else 0
        question, answer = question_and_answer(entry, rng.choice(QUESTIONS), n)
        quote = _quote(rng, sources, entry, n, quote_right, quote_wrong)
        content = prompts.rag(question, sources, quote)
        if len(content) > max_chars:
            continue
        messages = prompts.chat_messages(content, (), system)
        reply = answer if answerable else NOT_COVERED
        rows.append(
            {
                "messages": [*messages, {"role": "assistant", "content": reply}],
                "question": question,
                "name": entry.name,
                "answer": reply,
                "sources": [s.label for s in sources],
            }
        )
    return rows


def _quote(
    rng: random.Random, sources: list[Source], entry: Entry, n: int, right: float, wrong: float
) -> Source | None:
    """The app's "most relevant sentence" line: the entry's own line (when its source is
    there), a line of another source, or none, as the app's evidence finder gets it."""
    roll = rng.random()
    if n and roll < right:
        return Source(n, entry.sentence, sources[n - 1].source, sources[n - 1].page)
    if roll < right + wrong:
        other = rng.choice([s for s in sources if s.number != n])
        line = rng.choice(re.split(r"(?<=[.!?]) (?=[a-z_]+\.)", other.text))
        return Source(other.number, line, other.source, other.page)
    return None


# -- disjointness from the benchmark --------------------------------------------------------------


def shingles(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def check_disjoint(rows: Sequence[dict[str, Any]], benchmark_texts: Iterable[str]) -> list[str]:
    """The rows' questions that share an 8-word run with a benchmark text (pages or questions);
    empty when the data holds nothing of the benchmark."""
    bench: set[tuple[str, ...]] = set()
    for text in benchmark_texts:
        bench |= shingles(text)
    return [
        row["question"]
        for row in rows
        if any(shingles(m["content"]) & bench for m in row["messages"])
    ]


def write(root: str | Path, n_train: int, n_val: int, seed: int) -> dict[str, Any]:
    """`root`/train.jsonl and val.jsonl (val from its own seed) and a manifest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n, offset in (("train", n_train, 0), ("val", n_val, 1)):
        rows = build_rows(n, seed * 2 + offset)
        with (root / f"{split}.jsonl").open("w", encoding="utf-8") as out:
            for row in rows:
                out.write(json.dumps({"messages": row["messages"]}, ensure_ascii=False) + "\n")
        counts[split] = len(rows)
    manifest = {"seed": seed, "rows": counts, "modules": len(MODULES)}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest
