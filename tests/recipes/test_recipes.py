"""Demo recipes: corpus parsing, deterministic leak-free splits, the end-to-end miniature.
(Scorers and the evaluation loop: test_recipe_eval.py.)"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from recipes import baselines, corpora, prepare, tasks
from recipes.evaluate import read_rows as rows


# --------------------------------------------------------------------------- corpora
def test_speeches_parse_speakers_continuations_and_stage_directions():
    scene = [
        "",
        "[Enter Hamlet and Horatio.]",
        "",
        "Ham.",
        "Who's there? [Draws.]",
        "Speak, I say.",
        "",
        "[Exit Ghost.]",
        "",
        "We do it wrong, being so majestical,",
        "",
        "FIRST WITCH.",
        "[Aside.]",
        "Where hast thou been, sister?",
    ]
    speeches = corpora.parse_speeches(scene)
    assert speeches == [
        corpora.Speech("Ham", ("Who's there?", "Speak, I say.")),
        corpora.Speech("Ham", ("We do it wrong, being so majestical,",)),
        corpora.Speech("FIRST WITCH", ("Where hast thou been, sister?",)),
    ]


def test_real_play_splits_into_scenes_with_named_speakers():
    play = corpora.read_play("hamlet")
    assert play.title == "Hamlet" and len(play.scenes) == 20
    speakers = {sp.speaker for s in play.scenes for sp in s.speeches}
    assert {"Ham", "Hor", "King", "Queen", "Oph"} <= speakers
    assert "To be, or not to be" in play.text() and "[Enter" not in "".join(
        line for s in play.scenes for sp in s.speeches for line in sp.lines
    )


def test_missing_corpus_package_says_how_to_install():
    with pytest.raises(corpora.CorpusMissing, match="make test"):
        corpora.package_dir("no_such_corpus_package_xyz")


def test_passages_tile_held_out_speeches_and_overlap_for_training():
    speech = corpora.Speech("Ham", tuple(f"line {i} " + "x" * 30 for i in range(7)))  # 37 chars
    tiles = list(tasks.passages(speech, min_chars=50, max_lines=4, max_chars=120))
    lines = speech.lines  # 3 lines fit 120 chars; the 7th alone is under 50
    assert tiles == [" ".join(lines[0:3]), " ".join(lines[3:6])]
    windows = list(tasks.passages(speech, min_chars=50, max_lines=4, max_chars=120, stride=2))
    assert [w.split()[1] for w in windows] == ["0", "2", "4"]  # the third reaches the end
    assert list(tasks.passages(speech)) == [" ".join(speech.lines[i : i + 2]) for i in (0, 2, 4)]


# --------------------------------------------------------------------------- splits
def test_held_out_is_seeded_and_stable():
    assert tasks.held_out(20, "hamlet", 0) == tasks.held_out(20, "hamlet", 0)
    assert tasks.held_out(20, "hamlet", 0) != tasks.held_out(20, "hamlet", 1)
    assert len(tasks.held_out(20, "hamlet", 0)) == 3 and tasks.held_out(1, "x", 0) == frozenset()


def test_prepare_is_deterministic(recipe_dir, tmp_path):
    root, _ = recipe_dir
    prepare.write_plays(tmp_path, 0, prepare.Sizes())
    for split in ("train", "val", "test"):
        name = f"plays/{split}.jsonl"
        assert (tmp_path / name).read_bytes() == (root / name).read_bytes()


def test_held_out_play_lines_are_in_no_training_file_nor_the_pretraining_text(recipe_dir):
    root, manifest = recipe_dir
    test = rows(root / "plays/test.jsonl")
    assert len(test) == 500 and manifest["plays"]["chance"] == pytest.approx(0.1)
    assert set(manifest["plays"]["per_label"]["test"].values()) == {50}
    trained = rows(root / "plays/train.jsonl") + rows(root / "plays/val.jsonl")
    train = {r["prompt"] for r in trained} | {r["completion"] for r in trained}
    corpus = "\n".join(p.read_text(encoding="utf-8") for p in (root / "pretrain").glob("*.txt"))
    corpus = " ".join(corpus.split())
    for row in test:
        assert row["prompt"] not in train
        line = row["prompt"].split("\n\nPassage: ", 1)[1]
        assert line == row["passage"] and line not in train
        assert line[:50] not in corpus, f"held-out line seen in pre-training: {line!r}"


def test_training_windows_run_across_speeches_and_held_out_passages_stay_in_one(recipe_dir):
    root, _ = recipe_dir
    play = corpora.read_play("macbeth")
    speeches = [" ".join(sp.lines) for s in play.scenes for sp in s.speeches]
    scenes = [" ".join(line for sp in s.speeches for line in sp.lines) for s in play.scenes]

    def passages(split: str) -> list[str]:
        found = rows(root / f"plays/{split}.jsonl")
        return [r["prompt"].split("Passage: ", 1)[1] for r in found if r["completion"] == "Macbeth"]

    def in_one_speech(text: str) -> bool:
        return any(text in speech for speech in speeches)

    train, test = passages("train"), passages("test")
    assert all(any(t in scene for scene in scenes) for t in train)
    across = [t for t in train if not in_one_speech(t)]
    assert 0.2 < len(across) / len(train) < 0.9  # windows over turns between speakers, and within
    assert len(test) == 50 and all(in_one_speech(t) for t in test)


def test_pretraining_text_keeps_the_training_scenes(recipe_dir):
    root, manifest = recipe_dir
    hamlet = " ".join((root / "pretrain/hamlet.txt").read_text(encoding="utf-8").split())
    play = corpora.read_play("hamlet")
    skipped = set(manifest["held_out_scenes"]["hamlet"])
    for i, scene in enumerate(play.scenes):
        line = next(line for sp in scene.speeches for line in sp.lines if len(line) > 30)
        assert (line in hamlet) == (i not in skipped), (i, line)


def test_a_plays_held_out_scenes_do_not_depend_on_the_other_task_plays():
    # the pre-training text drops the held-out scenes of every "which play?" play; the instruction
    # tasks hold out the scenes of their own plays, which must be the same scenes
    assert set(tasks.INSTRUCT_PLAYS) < set(tasks.TASK_PLAYS)
    every = tasks.held_out_scenes(0)
    for key in tasks.INSTRUCT_PLAYS:
        assert tasks.held_out_scenes(0, (key,))[key] == every[key]


def test_instruction_test_inputs_are_never_trained_on(recipe_dir):
    root, manifest = recipe_dir
    train = rows(root / "instruct/train.jsonl") + rows(root / "instruct/val.jsonl")
    seen = {(r["instruction"], r["input"]) for r in train}
    test = rows(root / "instruct/test.jsonl")
    assert {r["task"] for r in test} == {"bible_book", "speaker", "named", "testament"}
    assert all((r["instruction"], r["input"]) not in seen for r in test)
    assert manifest["instruct"]["tasks"]["chat_reply"]["train"] > 0
    # label tasks are balanced over their answers (up to an equal share each), so always giving
    # the majority answer is no shortcut
    for task in ("bible_book", "speaker", "testament"):
        answers = Counter(r["output"] for r in test if r["task"] == task)
        share = -(-prepare.Sizes().instruct_test_per_task // len(answers))
        assert len(answers) > 1 and max(answers.values()) <= share, (task, answers)


def test_play_names_are_cast_words_used_as_names_never_in_lower_case():
    hamlet = tasks.names("hamlet")
    assert {"Hamlet", "Horatio", "Ophelia", "Polonius", "Denmark"} <= hamlet
    # in the cast list, but the speeches also use them in lower case ("the king", "a friend")
    assert not {"King", "Friend", "Prince", "Queen", "Lord"} & hamlet
    assert not {"Ham", "Hor"} & hamlet  # abbreviated speaker headings are not names in the text
    assert {"Shylock", "Venice"} <= tasks.names("merchant_of_venice")
    assert "Jew" not in tasks.names("merchant_of_venice")  # mostly "the Jew": not a name
    assert {"Montague", "Capulet"} <= tasks.names("romeo_and_juliet")  # sometimes "the Montague"


def test_named_examples_name_exactly_one_known_name_which_is_the_answer():
    play = corpora.read_play("julius_caesar")
    known = tasks.names("julius_caesar")
    examples = tasks.named_examples("julius_caesar", play.scenes[:4])
    assert len(examples) > 10
    for e in examples:
        found = {w for w in known if re.search(rf"\b{w}\b", e.input)}
        assert found == {e.output}, (e.input, found)
        assert e.instruction == tasks.INSTRUCTIONS["named"].format(title=play.title)
        assert not e.labels  # scored by exact match of the greedy answer


def test_testament_examples_are_balanced_and_labelled_by_book():
    verses = [v for v in corpora.read_bible() if v.book in ("Genesis", "Ruth", "Matthew")]
    examples = tasks.testament_examples(verses, "k", seed=0)
    assert examples == tasks.testament_examples(verses, "k", seed=0)
    n_new = sum(v.book == "Matthew" and len(v.text) >= 40 for v in verses)
    assert Counter(e.output for e in examples) == {"Old Testament": n_new, "New Testament": n_new}
    book = {v.text: v.book for v in verses}
    for e in examples:
        assert e.output == ("New Testament" if book[e.input] == "Matthew" else "Old Testament")
        assert e.labels == tasks.TESTAMENTS and len(e.input) >= 40


def test_instruction_tasks_have_answerable_rows(recipe_dir):
    root, _ = recipe_dir
    test = rows(root / "instruct/test.jsonl")
    for row in (r for r in test if r["task"] == "named"):
        assert re.search(rf"\b{row['output']}\b", row["input"]) and not row["labels"]
    for row in (r for r in test if r["task"] == "speaker"):
        before, reply = row["input"].split("\n")
        assert reply.startswith("?: ") and not before.startswith(row["output"] + ":")


def test_play_validation_comes_from_scenes_never_trained_on(recipe_dir):
    root, _ = recipe_dir
    train = " ".join(r["prompt"].split("Passage: ", 1)[1] for r in rows(root / "plays/train.jsonl"))
    val = [r["prompt"].split("Passage: ", 1)[1] for r in rows(root / "plays/val.jsonl")]
    assert len(val) > 100 and not [v for v in val if v[:60] in train]


def test_plays_training_rows_are_balanced_questions(recipe_dir):
    root, _ = recipe_dir
    train = rows(root / "plays/train.jsonl")
    per_label = prepare.Sizes().plays_train_per_label
    assert len(train) == len(tasks.TASK_PLAYS) * per_label
    assert set(Counter(r["completion"] for r in train).values()) == {per_label}
    assert all("\n\nPassage: " in r["prompt"] for r in train)
    assert (
        baselines.ngram_baseline(root / "plays/train.jsonl", root / "plays/test.jsonl")["n"] == 500
    )


def test_jsonl_shapes(recipe_dir):
    root, _ = recipe_dir
    for split in ("train", "val"):
        for row in rows(root / f"plays/{split}.jsonl"):
            assert set(row) == {"prompt", "completion"} and row["prompt"] and row["completion"]
        for row in rows(root / f"instruct/{split}.jsonl"):
            assert set(row) == {"instruction", "input", "output"} and row["output"].strip()
    for row in rows(root / "instruct/test.jsonl"):
        assert not row["labels"] or row["output"] in row["labels"]


@pytest.mark.slow
def test_miniature_demo_end_to_end(tmp_path):
    """prepare -> pretrain (trainer CLI) -> task fine-tune -> eval -> report, at toy size."""
    from recipes import run

    demo = run.Demo(
        data=str(tmp_path / "data"),
        models=str(tmp_path / "models"),
        pretrain_minutes=2,
        demo_test_limit=5,
    )
    demo.pretrain.update(
        vocab_size=400,
        n_layer=1,
        n_head=2,
        n_embd=32,
        block_size=256,
        batch_size=4,
        max_steps=5,
        warmup_steps=1,
        eval_every=5,
        eval_steps=2,
    )
    demo.demo_finetune.update(max_steps=3, warmup_steps=1, batch_size=4, eval_every=3)
    run.step_prepare(demo)
    run.step_pretrain(demo)
    weights = tmp_path / "models" / run.PRETRAINED / "model.safetensors"
    trained = weights.stat().st_mtime_ns
    (tmp_path / "data/results/pretrain.json").unlink()
    demo.reuse = True  # the checkpoint is kept; its result is computed again
    run.step_pretrain(demo)
    assert weights.stat().st_mtime_ns == trained
    demo.reuse = False
    run.step_task(demo, models=("demo",))
    text = run.step_report(demo)
    pre = json.loads((tmp_path / "data/results/pretrain.json").read_text())
    assert pre["unigram_ppl"] > 1 and pre["ratio"] == pytest.approx(
        pre["model_val_ppl_full"] / pre["unigram_ppl"]
    )
    assert set(pre["samples"]) == {"0.5", "0.8", "1.1"}
    after = json.loads((tmp_path / "data/results/plays-demo-after.json").read_text())
    assert after["n"] == {"plays": 5}
    assert after["scoring"] == {"plays": "rank"} and after["accuracy"] == after["rank_accuracy"]
    assert set(after["channel_accuracy"]) == {"plays"}
    assert all(a["channel_ok"] == (a["channel_pick"] == a["gold"]) for a in after["answers"])
    assert "| demo | 5 |" in text and "Pre-training" in text
