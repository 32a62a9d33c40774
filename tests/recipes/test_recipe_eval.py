"""Demo recipes: the scorers (label, exact, rank, channel), the baselines, the evaluation loop."""

from __future__ import annotations

import json
import math

import pytest

from recipes import baselines, corpora, evaluate, prepare


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
        return "".join(
            json.dumps({"prompt": f"Which?\n\nPassage: {t}", "completion": label}) + "\n"
            for t, label in texts
        )

    train = [(f"the crown and the {w} of the king", "A") for w in ("sword", "throne", "court")]
    train += [(f"the sea and the {w} of the ship", "B") for w in ("wave", "sail", "storm")]
    (tmp_path / "train.jsonl").write_text(rows(train), encoding="utf-8")
    test = [("a king with a crown", "A"), ("a ship at sea", "B"), ("storm and wave", "B")]
    (tmp_path / "test.jsonl").write_text(rows(test), encoding="utf-8")
    result = baselines.ngram_baseline(tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert result["n"] == 3
    assert result["words"] == 1.0 and result["char 2-5-grams"] == 1.0


def test_unigram_perplexity_matches_hand_calculation():
    # counts 0:2, 1:1, 2:0 with add-one over V=3: p(0) = 3/6, p(2) = 1/6 -> ppl = sqrt(2 * 6)
    assert baselines.unigram_perplexity([0, 0, 1], [0, 2], 3) == pytest.approx(math.sqrt(12))
    assert baselines.unigram_perplexity([5] * 10, [5] * 4, 1) == pytest.approx(1.0)


def test_split_stream_matches_block_targets():
    train, val = baselines.split_stream(list(range(23)), 0.5, 4)
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
    config = ModelConfig.preset(
        "classic", vocab_size=tok.vocab_size, n_layer=1, n_head=2, n_embd=16, block_size=256
    )
    return checkpoint.save(Decoder(config), tmp_path_factory.mktemp("tiny"), tok)


def test_evaluate_scores_every_row_of_a_real_checkpoint(tiny_checkpoint, recipe_dir, tmp_path):
    root, _ = recipe_dir
    open_rows = [
        {
            "instruction": "Complete this line.",
            "input": "To be or not to",
            "output": "be",
            "task": "open",
            "labels": [],
        }
    ] * 3
    test = tmp_path / "test.jsonl"
    prepare.write_jsonl(test, evaluate.read_rows(root / "instruct/test.jsonl") + open_rows)
    result = evaluate.evaluate(tiny_checkpoint, test, 4, limit=3)
    labelled = ("bible_book", "speaker", "testament")
    assert result["n"] == {**dict.fromkeys(labelled, 3), "named": 3, "open": 3}
    for answer in result["answers"]:
        row_ok = answer["ok"]
        assert isinstance(answer["answer"], str) and row_ok in (True, False)
    assert set(result["accuracy"]) == set(result["n"])
    assert result["scoring"] == {
        **dict.fromkeys(labelled, "rank"),
        "named": "exact",
        "open": "exact",
    }
    assert result["accuracy"]["speaker"] == result["rank_accuracy"]["speaker"]
    assert result["accuracy"]["open"] == result["generation_accuracy"]["open"]
    ranked = [a for a in result["answers"] if a["task"] in labelled]
    assert len(ranked) == 9 and all(a["rank_ok"] == (a["rank_pick"] == a["gold"]) for a in ranked)
    quick = evaluate.evaluate(tiny_checkpoint, test, 4, 3, False)
    assert quick["rank_accuracy"] == result["rank_accuracy"] and quick["n"] == result["n"]
    assert set(quick["generation_accuracy"]) == {"named", "open"}
    assert [a.get("answer") is None for a in quick["answers"]] == [
        t in labelled for t in quick["n"] for _ in "abc"
    ]


def test_rank_classification_picks_the_label_with_the_highest_log_prob(tiny_checkpoint):
    """The cached, batched scorer equals a direct full-sequence log-prob of each encoded reply."""
    import torch

    from core.generate.engine import LLM
    from core.train import data

    llm = LLM.load(tiny_checkpoint, dtype="fp32")
    labels = ["Hamlet", "Macbeth", "Romeo and Juliet", "The Merchant of Venice"]
    picks = []
    for line in ("Fair is foul, and foul is fair.", "Is this a dagger which I see?"):
        row = {
            "prompt": f"Which play? {line}",
            "completion": "Macbeth",
            "labels": labels,
            "task": "plays",
        }
        prompt, replies = evaluate.label_continuations(llm.tokenizer, row)
        assert len({len(r) for r in replies}) > 1  # unequal lengths: padding is exercised
        slow = []
        for label in labels:
            chat = [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": label},
            ]
            ids, targets = data.encode_chat(llm.tokenizer, chat, "test")
            end = targets.index(llm.tokenizer.token_to_id("<|im_end|>"))
            with torch.no_grad():
                logp = llm.model(torch.tensor([ids[: end + 1]]))[0].log_softmax(-1)  # (T, V)
            slow.append(
                sum(logp[j - 1, ids[j]].item() for j in range(end + 1) if targets[j] != data.IGNORE)
            )
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

    from core.generate.engine import LLM
    from core.train import data

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
        slow.append(
            sum(logp[j - 1, ids[j]].item() for j in range(1, len(ids)) if targets[j] != data.IGNORE)
        )
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

    def generate(self, messages, **_):
        from core.generate.logits import SettingsError

        self.asked.append(messages)
        if messages[-1]["content"] == "too long":
            raise SettingsError("the prompt does not fit")
        return self.answers.get(messages[-1]["content"], "")


def test_rows_are_asked_as_fine_tuning_renders_them_and_scored_per_task():
    from core.generate import prompts

    task_row = {
        "prompt": "Which play?",
        "completion": "Hamlet",
        "labels": ["Hamlet", "Macbeth"],
        "task": "plays",
    }
    alpaca = {
        "instruction": "Continue.",
        "input": "To be or",
        "output": "not to be",
        "task": "next",
    }
    content = prompts.instruction("Continue.", "To be or")
    llm = _Answers({"Which play?": "Macbeth.", content: "Not to be, that is"})
    result = evaluate.evaluate_rows(llm, [task_row, alpaca])
    assert llm.asked == [
        [{"role": "user", "content": "Which play?"}],
        [{"role": "user", "content": content}],
    ]
    assert result["accuracy"] == {"plays": 0.0, "next": 1.0}


def test_a_prompt_longer_than_the_context_is_a_counted_miss():
    row = {"prompt": "too long", "completion": "Hamlet", "labels": ["Hamlet"], "task": "plays"}
    result = evaluate.evaluate_rows(_Answers({}), [row, {**row, "prompt": "short"}])
    assert result["accuracy"] == {"plays": 0.0} and result["too_long"] == 1


def test_fitting_drops_rows_longer_than_the_checkpoint_context(tiny_checkpoint, tmp_path):
    from recipes import run

    rows = [
        {"prompt": "Which play?", "completion": "Hamlet"},
        {"prompt": "word " * 400, "completion": "Hamlet"},
    ]
    prepare.write_jsonl(tmp_path / "train.jsonl", rows)
    kept = evaluate.read_rows(run.fitting(tmp_path / "train.jsonl", tiny_checkpoint))
    assert kept == rows[:1]


def test_eval_cli_names_what_is_missing_and_writes_nothing(tmp_path, capsys):
    from recipes.__main__ import main

    data = tmp_path / "data"
    assert (
        main(["eval", "--data", str(data), "--model", "x", "--split", "plays", "--name", "y"]) == 2
    )
    assert "--only (the model kind: demo or smollm2)" in capsys.readouterr().err
    args = ["eval", "--data", str(data), "--model", "x", "--split", "plays", "--only", "demo"]
    assert main([*args, "--name", "y"]) == 2  # no prepared data: says which step to run first
    assert "run `python -m recipes prepare` first" in capsys.readouterr().err
    assert not data.exists()


def test_report_says_which_weights_a_fine_tune_kept(tmp_path):
    from recipes import report

    def steps(keep_best, best_step):
        ft = {
            "step": 1000,
            "best_step": best_step,
            "elapsed_s": 600,
            "settings": {"keep_best": keep_best},
        }
        (tmp_path / "ft-m.json").write_text(json.dumps(ft), encoding="utf-8")
        return report._steps(tmp_path, "m")

    assert (
        steps(True, 550) == "1000 steps (weights of step 550, the lowest val loss), 10.0 min wall"
    )
    assert "the last step's weights: its val loss was the lowest" in steps(True, 1000)
    assert steps(False, 550) == "1000 steps, 10.0 min wall"  # keep-best off: the last weights
    assert report._steps(tmp_path, "absent") == "—"
