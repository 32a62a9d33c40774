"""core.train.data: packed pre-training blocks, fine-tuning loss masks, typed data errors."""

from __future__ import annotations

import json

import pytest
import torch

from core.train import data
from core.train.data import IGNORE, DataError

TEXT = "the king rides to the castle at night and the queen sings of love and war\n" * 40
TASK = {"prompt": "Which play is this line from?\nTo be, or not to be", "completion": "Hamlet"}
ALPACA = {"instruction": "Name the author", "input": "Paradise Lost", "output": "John Milton"}
ALPACA_NO_INPUT = {"instruction": "Say hello", "output": "Hello there."}
CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "who wrote Hamlet?"},
        {"role": "assistant", "content": "\n\nShakespeare."},  # leading newlines: BPE merges them
    ]
}


@pytest.fixture(scope="module")
def tok():
    return data.train_tokenizer([TEXT, json.dumps([TASK, ALPACA, CHAT])], vocab_size=400)


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def trained_text(tok, ids, labels) -> str:
    return tok.decode([i for i, label in zip(ids, labels, strict=True) if label != IGNORE])


# --------------------------------------------------------------------------- tokenizer + blocks
def test_chat_markers_are_single_special_tokens_and_im_end_stops(tok):
    for marker in data.SPECIAL_TOKENS:
        assert tok.encode(marker) == [tok.token_to_id(marker)]
    assert tok.token_to_id("<|im_end|>") in tok.stop_token_ids
    assert tok.eos_token == "<|endoftext|>"


def test_blocks_are_shifted_and_split_on_the_stream_without_overlap(tmp_path, tok):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.md").write_text("a second document " * 30, encoding="utf-8")
    texts = data.read_texts([tmp_path])
    stream = data.token_stream(texts, tok)
    assert (stream == tok.eos_token_id).sum() == 2  # one EOS after each document
    train, val = data.pretrain_datasets(texts, tok, block_size=16, val_fraction=0.2)
    assert torch.equal(torch.cat([train.stream, val.stream]), stream)
    assert len(val.stream) == int(len(stream) * 0.2)
    x, y = train[3]
    assert x.shape == y.shape == (16,)
    assert torch.equal(x[1:], y[:-1]) and torch.equal(x, stream[48:64])
    last = (
        len(train) - 1
    )  # the last block's target may be the stream's last train token, no further
    assert (last + 1) * 16 + 1 <= len(train.stream)


def test_globs_and_folders_expand_to_sorted_files(tmp_path):
    for name in ("b.txt", "a.txt", "skip.bin"):
        (tmp_path / name).write_text("x", encoding="utf-8")
    assert [p.name for p in data.expand_paths([tmp_path])] == ["a.txt", "b.txt"]
    assert [p.name for p in data.expand_paths([str(tmp_path / "*.txt")])] == ["a.txt", "b.txt"]


# --------------------------------------------------------------------------- loss masks
@pytest.mark.parametrize(
    ("record", "replies"),
    [
        (TASK, ["Hamlet"]),
        (ALPACA, ["John Milton"]),
        (ALPACA_NO_INPUT, ["Hello there."]),
        (CHAT, ["Hello!", "\n\nShakespeare."]),
    ],
    ids=["task", "alpaca", "alpaca-no-input", "chat-two-turns"],
)
def test_only_replies_and_their_end_token_carry_loss(tok, record, replies):
    messages = data.to_messages(record, "x:1")
    ids, labels = data.encode_chat(tok, messages, "x:1")
    full = tok.apply_chat_template(messages, add_generation_prompt=False)
    assert tok.decode(ids) == full  # nothing lost or duplicated at the turn boundaries
    assert trained_text(tok, ids, labels) == "".join(r + "<|im_end|>" for r in replies)
    end = tok.token_to_id("<|im_end|>")
    trained = [i for i, label in enumerate(labels) if label != IGNORE]
    assert [ids[i] for i in trained if ids[i] == end] == [end] * len(replies)
    assert all(labels[i] == ids[i] for i in trained)
    # everything up to the generation prompt is masked; the reply's first token is trained
    first = next(k for k, m in enumerate(messages) if m["role"] == "assistant")
    n = len(tok.encode(data.prompts.render(tok, messages[:first], add_generation_prompt=True)))
    assert set(labels[:n]) == {IGNORE} and labels[n] == ids[n]


def test_alpaca_user_turn_is_the_prompts_instruction_template(tok):
    messages = data.to_messages(ALPACA, "x:1")
    assert messages[0]["content"] == data.prompts.instruction("Name the author", "Paradise Lost")


def test_example_labels_are_shifted_for_next_token_prediction(tok):
    example = data.encode_example(tok, TASK, block_size=64, where="x:1")
    ids, labels = data.encode_chat(tok, data.to_messages(TASK, "x:1"), "x:1")
    assert torch.equal(example.input_ids, torch.tensor(ids[:-1]))
    assert torch.equal(example.labels, torch.tensor(labels[1:]))


def test_long_examples_keep_the_start_and_collate_pads(tok):
    full = data.encode_example(tok, TASK, block_size=512, where="x:1")
    cut = len(full.input_ids) - 2  # cuts the end marker and the newline after it
    short = data.encode_example(tok, TASK, block_size=cut, where="x:1")
    assert torch.equal(short.input_ids, full.input_ids[:cut])
    x, y = data.collate([short, full], pad_id=0)
    assert x.shape == y.shape == (2, len(full.input_ids))
    assert (y[0, cut:] == IGNORE).all() and (x[0, cut:] == 0).all()


# --------------------------------------------------------------------------- bad data
BAD_JSONL = [
    ("{not json", 2, "invalid JSON"),
    ('{"prompt": "only a prompt"}', 2, "missing field 'completion'"),
    ('{"instruction": "x"}', 2, "missing field 'output'"),
    ('{"prompt": "p", "completion": 7}', 2, "must be a string"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', 2, "no assistant message"),
    ('{"messages": [{"role": "bot", "content": "hi"}]}', 2, "needs a role"),
    ('{"text": "hello"}', 2, "unrecognised example"),
    ("[1, 2]", 2, "must be a JSON object"),
]


@pytest.mark.parametrize(("line", "number", "message"), BAD_JSONL)
def test_bad_jsonl_names_file_and_line(tmp_path, tok, line, number, message):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(TASK) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message) as err:
        data.finetune_examples(path, tok, block_size=64)
    assert f"{path}:{number}:" in str(err.value)


def test_response_truncated_away_names_file_and_line(tmp_path, tok):
    long = {"prompt": "the king rides " * 40, "completion": "Hamlet"}
    path = write_jsonl(tmp_path / "t.jsonl", [TASK, long])
    with pytest.raises(DataError, match="response is truncated away") as err:
        data.finetune_examples(path, tok, block_size=48)
    assert f"{path}:2:" in str(err.value)


def test_empty_jsonl_and_empty_corpus_name_the_file(tmp_path, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{empty}: no examples"):
        data.read_jsonl(empty)
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{blank}: the corpus is empty"):
        data.read_texts([blank])


def test_corpus_smaller_than_one_block_names_the_file(tmp_path, tok):
    small = tmp_path / "small.txt"
    small.write_text("the king rides", encoding="utf-8")
    texts = data.read_texts([small])
    with pytest.raises(DataError, match="fewer than one block") as err:
        data.pretrain_datasets(texts, tok, block_size=64, val_fraction=0.0)
    assert str(small) in str(err.value)
    with pytest.raises(DataError, match="validation split"):
        data.pretrain_datasets(data.read_texts([small]) * 20, tok, 16, val_fraction=0.05)


def test_missing_paths_and_non_utf8_files_are_refused(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        data.read_texts([tmp_path / "nope*.txt"])
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=f"{binary}: not UTF-8"):
        data.read_texts([binary])


def test_smollm2_template_masks_replies_with_its_own_markers(smollm2):
    tok = smollm2.tokenizer
    for record, reply in ((TASK, "Hamlet"), (ALPACA, "John Milton")):
        ids, labels = data.encode_chat(tok, data.to_messages(record, "x:1"), "x:1")
        assert trained_text(tok, ids, labels) == reply + "<|im_end|>"
        assert ids == tok.encode(tok.apply_chat_template(data.to_messages(record, "x"), False))
