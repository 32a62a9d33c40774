"""Demo recipes: corpus parsing, deterministic leak-free splits, scorers, unigram baseline, eval loop."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from core.recipes import corpora, evaluate, prepare, tasks


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory):
    """One full `prepare` run (all corpora, default sizes) shared by the tests below."""
    root = tmp_path_factory.mktemp("recipes")
    return root, prepare.prepare(root, seed=0)


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


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
    assert len(test) == 250 and manifest["plays"]["chance"] == pytest.approx(0.2)
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


def test_pretraining_text_keeps_the_training_scenes(recipe_dir):
    root, manifest = recipe_dir
    hamlet = " ".join((root / "pretrain/hamlet.txt").read_text(encoding="utf-8").split())
    play = corpora.read_play("hamlet")
    skipped = set(manifest["held_out_scenes"]["hamlet"])
    for i, scene in enumerate(play.scenes):
        line = next(line for sp in scene.speeches for line in sp.lines if len(line) > 30)
        assert (line in hamlet) == (i not in skipped), (i, line)


def test_instruction_test_inputs_are_never_trained_on(recipe_dir):
    root, manifest = recipe_dir
    train = rows(root / "instruct/train.jsonl") + rows(root / "instruct/val.jsonl")
    seen = {(r["instruction"], r["input"]) for r in train}
    test = rows(root / "instruct/test.jsonl")
    assert {r["task"] for r in test} == {"bible_book", "speaker", "next_words", "verse_next"}
    assert all((r["instruction"], r["input"]) not in seen for r in test)
    assert manifest["instruct"]["tasks"]["chat_reply"]["train"] > 0
    # label tasks are balanced over their answers (up to an equal share each), so always giving
    # the majority answer is no shortcut
    for task in ("bible_book", "speaker"):
        answers = Counter(r["output"] for r in test if r["task"] == task)
        share = -(-prepare.Sizes().instruct_test_per_task // len(answers))
        assert len(answers) > 1 and max(answers.values()) <= share, (task, answers)


WORDS = ["sun", "moon", "Star", "star", "sea", "sky"]


def test_cloze_options_are_the_gold_word_and_distinct_distractors_in_a_seeded_order():
    pairs = [(f"line {i} ends with", w) for i, w in enumerate(WORDS)]
    examples = tasks.cloze("next_words", pairs, "k", seed=0)
    assert examples == tasks.cloze("next_words", pairs, "k", seed=0)
    for (prefix, word), example in zip(pairs, examples, strict=True):
        options = example.labels
        assert example.input == prefix and example.output == word and word in options
        assert len({o.lower() for o in options}) == 4 and set(options) <= {w for _, w in pairs}
        assert example.instruction.endswith(f"Answer with one of: {', '.join(options)}.")
    assert len({e.labels.index(e.output) for e in examples}) > 1  # the gold moves around
    assert tasks.cloze("next_words", pairs[:2], "k", 0) == []  # too few words for 4 options
    assert tasks.continuation("And so I bid you all good night, sweet lords.") == (
        "And so I bid you all good night, sweet",
        "lords",
    )
    assert tasks.continuation("Too short a line.") is None
    assert tasks.continuation("one two three four five six seven --") is None


def test_instruction_tasks_have_answerable_rows(recipe_dir):
    root, _ = recipe_dir
    test = rows(root / "instruct/test.jsonl")
    for row in (r for r in test if r["task"] in ("next_words", "verse_next")):
        assert len({o.lower() for o in row["labels"]}) == 4 and row["output"] in row["labels"]
        assert row["output"].isalpha() or "'" in row["output"]  # no punctuation to give it away
    positions = Counter(r["labels"].index(r["output"]) for r in test if r["task"] == "next_words")
    assert len(positions) == 4
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
    assert len(train) == 5 * prepare.Sizes().plays_train_per_label
    assert set(Counter(r["completion"] for r in train).values()) == {720}
    assert all("\n\nPassage: " in r["prompt"] for r in train)
    assert (
        evaluate.ngram_baseline(root / "plays/train.jsonl", root / "plays/test.jsonl")["n"] == 250
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


# --------------------------------------------------------------------------- scorers
def test_label_scorer_takes_the_first_label_named():
    labels = ["Hamlet", "Macbeth", "Romeo and Juliet"]
    assert evaluate.score_label("It is from Macbeth, not Hamlet.", "Macbeth", labels)
    assert not evaluate.score_label("Hamlet or Macbeth?", "Macbeth", labels)
    assert evaluate.score_label("romeo  AND juliet!", "Romeo and Juliet", labels)
    assert not evaluate.score_label("Hamletish", "Hamlet", labels)  # whole words only
    assert evaluate.first_label("no idea", labels) is None


def test_exact_scorer_ignores_case_punctuation_and_trailing_words():
    assert evaluate.score_exact("LORD for ever. Amen", "LORD for ever.")
    assert evaluate.score_exact("brow of woe", "brow of woe;")
    assert evaluate.score_exact("they're most alone", "they're most alone,--")
    assert not evaluate.score_exact("brow of sorrow", "brow of woe;")
    assert not evaluate.score_exact("", "brow of woe")


# --------------------------------------------------------------------------- baseline
def test_ngram_baseline_learns_words_that_give_the_label_away(tmp_path):
    def rows(texts: list[tuple[str, str]]) -> str:
        return "".join(json.dumps({"prompt": f"Which?\n\nPassage: {t}", "completion": label}) + "\n"
                       for t, label in texts)  # fmt: skip

    train = [(f"the crown and the {w} of the king", "A") for w in ("sword", "throne", "court")]
    train += [(f"the sea and the {w} of the ship", "B") for w in ("wave", "sail", "storm")]
    (tmp_path / "train.jsonl").write_text(rows(train), encoding="utf-8")
    test = [("a king with a crown", "A"), ("a ship at sea", "B"), ("storm and wave", "B")]
    (tmp_path / "test.jsonl").write_text(rows(test), encoding="utf-8")
    result = evaluate.ngram_baseline(tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert result["n"] == 3
    assert result["words"] == 1.0 and result["char 2-5-grams"] == 1.0


def test_unigram_perplexity_matches_hand_calculation():
    # counts 0:2, 1:1, 2:0 with add-one over V=3: p(0) = 3/6, p(2) = 1/6 -> ppl = sqrt(2 * 6)
    assert evaluate.unigram_perplexity([0, 0, 1], [0, 2], 3) == pytest.approx(math.sqrt(12))
    assert evaluate.unigram_perplexity([5] * 10, [5] * 4, 1) == pytest.approx(1.0)


def test_split_stream_matches_block_targets():
    train, val = evaluate.split_stream(list(range(23)), 0.5, 4)
    assert train == list(range(12))  # n_val = int(23 * 0.5) = 11 -> the tail 12..22
    assert val == list(range(13, 21))  # 2 blocks of 5 tokens from 12: targets 13..16, 17..20


# --------------------------------------------------------------------------- eval loop
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import torch

    from core import checkpoint
    from core.config import ModelConfig
    from core.model import Decoder
    from core.tokenizer import CHATML_TEMPLATE, Tokenizer

    texts = [" ".join(s.lines) for s in corpora.read_play("macbeth").scenes[0].speeches] * 3
    tok = Tokenizer.train(
        texts, 300, special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    )
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(0)
    config = ModelConfig.preset("classic", vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                                n_embd=16, block_size=256)  # fmt: skip
    return checkpoint.save(Decoder(config), tmp_path_factory.mktemp("tiny"), tok)


def test_evaluate_scores_every_row_of_a_real_checkpoint(tiny_checkpoint, recipe_dir, tmp_path):
    root, _ = recipe_dir
    open_rows = [{"instruction": "Complete this line.", "input": "To be or not to", "output": "be",
                  "task": "open", "labels": []}] * 3  # fmt: skip
    test = tmp_path / "test.jsonl"
    prepare.write_jsonl(test, evaluate.read_rows(root / "instruct/test.jsonl") + open_rows)
    result = evaluate.evaluate(tiny_checkpoint, test, 4, limit=3)
    labelled = ("bible_book", "speaker", "next_words", "verse_next")
    assert result["n"] == {**dict.fromkeys(labelled, 3), "open": 3}
    for answer in result["answers"]:
        row_ok = answer["ok"]
        assert isinstance(answer["answer"], str) and row_ok in (True, False)
    assert set(result["accuracy"]) == set(result["n"])
    assert result["scoring"] == {**dict.fromkeys(labelled, "rank"), "open": "exact"}
    assert result["accuracy"]["speaker"] == result["rank_accuracy"]["speaker"]
    assert result["accuracy"]["open"] == result["generation_accuracy"]["open"]
    ranked = [a for a in result["answers"] if a["task"] in labelled]
    assert len(ranked) == 12 and all(a["rank_ok"] == (a["rank_pick"] == a["gold"]) for a in ranked)
    quick = evaluate.evaluate(tiny_checkpoint, test, 4, 3, False)
    assert quick["rank_accuracy"] == result["rank_accuracy"] and quick["n"] == result["n"]
    assert set(quick["generation_accuracy"]) == {"open"}
    assert [a.get("answer") is None for a in quick["answers"]] == [t in labelled
                                                                  for t in quick["n"] for _ in "abc"]  # fmt: skip


def test_rank_classification_picks_the_label_with_the_highest_log_prob(tiny_checkpoint):
    """The cached, batched scorer equals a direct full-sequence log-prob of each encoded reply."""
    import torch

    from core import data
    from core.engine import LLM

    llm = LLM.load(tiny_checkpoint, dtype="fp32")
    labels = ["Hamlet", "Macbeth", "Romeo and Juliet", "The Merchant of Venice"]
    picks = []
    for line in ("Fair is foul, and foul is fair.", "Is this a dagger which I see?"):
        row = {"prompt": f"Which play? {line}", "completion": "Macbeth", "labels": labels,
               "task": "plays"}  # fmt: skip
        prompt, replies = evaluate.label_continuations(llm.tokenizer, row)
        assert len({len(r) for r in replies}) > 1  # unequal lengths: padding is exercised
        slow = []
        for label in labels:
            chat = [{"role": "user", "content": row["prompt"]},
                    {"role": "assistant", "content": label}]  # fmt: skip
            ids, targets = data.encode_chat(llm.tokenizer, chat, "test")
            end = targets.index(llm.tokenizer.token_to_id("<|im_end|>"))
            with torch.no_grad():
                logp = llm.model(torch.tensor([ids[: end + 1]]))[0].log_softmax(-1)  # (T, V)
            slow.append(sum(logp[j - 1, ids[j]].item() for j in range(end + 1)
                            if targets[j] != data.IGNORE))  # fmt: skip
            assert ids[: len(prompt)] == prompt
        fast = evaluate.continuation_logprobs(llm.model, prompt, replies)
        assert fast == pytest.approx(slow, abs=1e-4)
        result = evaluate.rank_rows(llm, [row])
        picks.append(labels[max(range(len(slow)), key=slow.__getitem__)])
        assert result["picks"] == [picks[-1]]
        assert result["accuracy"] == {"plays": float(picks[-1] == "Macbeth")}


def test_channel_scores_each_prompt_by_the_log_prob_of_the_same_reply(tiny_checkpoint):
    """The batched channel scorer equals a direct log-prob of the reply after each prompt, and
    channel classification picks the label whose prompt makes the passage likeliest."""
    import torch

    from core import data
    from core.engine import LLM

    llm = LLM.load(tiny_checkpoint, dtype="fp32")
    labels = ["Hamlet", "Macbeth", "Romeo and Juliet"]  # unequal lengths: padding is exercised
    passage = "Fair is foul, and foul is fair."
    prompts_ = [f"Write a passage from {label}." for label in labels]
    slow = []
    for prompt in prompts_:
        chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": passage}]
        ids, targets = data.encode_chat(llm.tokenizer, chat, "test")
        with torch.no_grad():
            logp = llm.model(torch.tensor([ids]))[0].log_softmax(-1)  # (T, V)
        slow.append(sum(logp[j - 1, ids[j]].item() for j in range(1, len(ids))
                        if targets[j] != data.IGNORE))  # fmt: skip
    fast = evaluate.channel_logprobs(llm.model, llm.tokenizer, prompts_, passage)
    assert fast == pytest.approx(slow, abs=1e-4)
    best = labels[max(range(3), key=slow.__getitem__)]
    row = {"passage": passage, "labels": labels, "completion": "Macbeth", "task": "plays"}
    result = evaluate.channel_rows(llm, [row], "Write a passage from {label}.")
    assert result["picks"] == [best] and result["accuracy"] == {"plays": float(best == "Macbeth")}


class _Answers:
    """A model stand-in that answers from a table and records the user messages it got."""

    def __init__(self, answers: dict[str, str]):
        self.answers, self.asked = answers, []

    def stream(self, messages, **_):
        from core.logits import SettingsError

        self.asked.append(messages)
        if messages[-1]["content"] == "too long":
            raise SettingsError("the prompt does not fit")
        return iter([self.answers.get(messages[-1]["content"], "")])


def test_rows_are_asked_as_fine_tuning_renders_them_and_scored_per_task():
    from core import prompts

    task_row = {"prompt": "Which play?", "completion": "Hamlet", "labels": ["Hamlet", "Macbeth"],
                "task": "plays"}  # fmt: skip
    alpaca = {
        "instruction": "Continue.",
        "input": "To be or",
        "output": "not to be",
        "task": "next",
    }
    content = prompts.instruction("Continue.", "To be or")
    llm = _Answers({"Which play?": "Macbeth.", content: "Not to be, that is"})
    result = evaluate.evaluate_rows(llm, [task_row, alpaca])
    assert llm.asked == [[{"role": "user", "content": "Which play?"}],
                         [{"role": "user", "content": content}]]  # fmt: skip
    assert result["accuracy"] == {"plays": 0.0, "next": 1.0}


def test_a_prompt_longer_than_the_context_is_a_counted_miss():
    row = {"prompt": "too long", "completion": "Hamlet", "labels": ["Hamlet"], "task": "plays"}
    result = evaluate.evaluate_rows(_Answers({}), [row, {**row, "prompt": "short"}])
    assert result["accuracy"] == {"plays": 0.0} and result["too_long"] == 1


def test_fitting_drops_rows_longer_than_the_checkpoint_context(tiny_checkpoint, tmp_path):
    from core.recipes import run

    rows = [{"prompt": "Which play?", "completion": "Hamlet"},
            {"prompt": "word " * 400, "completion": "Hamlet"}]  # fmt: skip
    prepare.write_jsonl(tmp_path / "train.jsonl", rows)
    kept = evaluate.read_rows(run.fitting(tmp_path / "train.jsonl", tiny_checkpoint))
    assert kept == rows[:1]


@pytest.mark.slow
def test_miniature_demo_end_to_end(tmp_path):
    """prepare -> pretrain (trainer CLI) -> task fine-tune -> eval -> report, at toy size."""
    from core.recipes import run

    demo = run.Demo(data=str(tmp_path / "data"), models=str(tmp_path / "models"),
                    pretrain_minutes=2, demo_test_limit=5)  # fmt: skip
    demo.pretrain.update(vocab_size=400, n_layer=1, n_head=2, n_embd=32, block_size=256,
                         batch_size=4, max_steps=5, warmup_steps=1, eval_every=5, eval_steps=2)  # fmt: skip
    demo.demo_finetune.update(max_steps=3, warmup_steps=1, batch_size=4, eval_every=3)
    run.step_prepare(demo)
    run.step_pretrain(demo)
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
