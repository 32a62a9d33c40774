"""The Train and Fine-tune tabs' event functions (`webapp.train_handlers`) over a real runner and
model registry: every bad input refused with its reason and nothing started; a pre-training job
started from pasted text, polled to the end with its curve and samples, picked in the selector
and chatted with; a fine-tune of it from table rows with before/after answers."""

from __future__ import annotations

import json
import time

import gradio as gr
import pytest

from tests.webapp.test_jobs import corpus
from webapp.jobs import JobRunner
from webapp.models import ModelRegistry
from webapp.train_handlers import TrainUI
from webapp.train_inputs import JobLimits
from webapp.train_tab import build_train_tabs

TOKEN = "owner-token-for-tests"
MICRO = ("custom", 2, 2, 32, 32, 300)  # preset, n_layer, n_head, n_embd, block_size, vocab_size


def pretrain_values(pasted: str = "", *, source="Paste", upload=None, shape=MICRO, steps=30):
    return (source, pasted, upload, None, *shape, steps, 10, 0.8, "the", "micro")


@pytest.fixture
def ui(tmp_path):
    models = tmp_path / "models"
    limits = JobLimits(max_text_bytes=2 * 1024 * 1024, max_params=5_000_000)
    made = TrainUI(JobRunner(models, models / ".jobs", limits), ModelRegistry(models))
    yield made
    job = made.runner.current()
    if job is not None:
        made.runner.kill(job)


def refused(call, *args) -> str:
    with pytest.raises(gr.Error) as caught:
        call(*args)
    return str(caught.value.message)


def poll_until(ui: TrainUI, done, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        views = ui.poll(TOKEN, [])
        if done(views):
            return views
        time.sleep(0.5)
    raise AssertionError(f"timed out; last status: {views[3] or views[6]}")


def test_bad_pretraining_input_is_refused_and_starts_nothing(ui, tmp_path):
    binary = tmp_path / "weights.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    big = "word " * (3 * 1024 * 1024 // 5)
    large_shape = ("custom", 12, 12, 768, 256, 8192)
    cases = {
        "empty; paste or upload some text": pretrain_values("   "),
        "3.0 MB; this server trains on at most 2.0 MB": pretrain_values(big),
        "weights.txt looks like binary data": pretrain_values(source="Upload", upload=str(binary)),
        "Choose a .txt or .md file": pretrain_values(source="Upload"),
        "parameters; this server trains at most 5.0M": pretrain_values(corpus(), shape=large_shape),
        "too short for a context of 32 tokens": pretrain_values("a few words only"),
    }
    for expected, values in cases.items():
        assert expected in refused(ui.start_pretrain, TOKEN, *values)
    assert "no owner key" in refused(ui.start_pretrain, "", *pretrain_values(corpus()))
    assert ui.runner.current() is None
    assert not [p for p in (tmp_path / "models").glob("*") if p.name != ".jobs"]


def test_bad_finetuning_input_is_refused_with_the_line(ui, tmp_path):
    upload = tmp_path / "train.jsonl"
    good = json.dumps({"prompt": "Hi", "completion": "Hello"})
    upload.write_text(f"{good}\n{{oops\n{good}\n")
    values = ("default", str(upload), None, 0, 0, 5, 1e-4, "tuned")
    assert refused(ui.start_finetune, TOKEN, *values).startswith("train.jsonl:2: invalid JSON")
    empty = ("default", None, [["", ""]], 0, 0, 5, 1e-4, "tuned")
    assert "Upload a JSONL file, or fill in rows" in refused(ui.start_finetune, TOKEN, *empty)
    rows = [["2+2?", "4"], ["3+3?", "6"]]
    too_many = ("default", None, rows, 1, 0, 5, 1e-4, "tuned")
    assert "at least two must remain" in refused(ui.start_finetune, TOKEN, *too_many)
    assert ui.runner.current() is None


def test_the_poll_hides_another_users_job(ui):
    assert ui.poll("", [])[3] == "No training job yet."
    ui.start_pretrain(TOKEN, *pretrain_values(corpus(), steps=2000))
    views = ui.poll("someone-else", [])
    assert "Another user's pretrain job is running" in views[3]
    assert views[4].loss.isna().all() and views[5] == ""  # neither their curve nor samples
    again = refused(ui.start_pretrain, "someone-else", *pretrain_values(corpus()))
    assert "one job at a time" in again


@pytest.mark.slow
def test_pretrain_from_pasted_text_then_chat_with_it_and_fine_tune_it(ui, tmp_path):
    status = ui.start_pretrain(TOKEN, *pretrain_values(corpus()))
    assert "pretrain `micro`: running" in status
    views = poll_until(ui, lambda v: ": done**" in v[3] and "step 30" in v[5])
    known = views[0]
    assert str(tmp_path / "models" / "micro") in known
    assert ui.poll(TOKEN, known)[1] == gr.skip()  # the selector is only updated on a change
    points = views[4]
    train = points[points.split == "train"]
    assert set(points.split) == {"train", "validation"} and list(train.step) == list(range(1, 31))
    assert train.loss.iloc[-5:].mean() < train.loss.iloc[:5].mean()  # it learned
    assert "**step 10**" in views[5] and "tokens/s" in views[3]
    sample = ui.sample_now(TOKEN, 0.0)
    assert sample.startswith("**step 30** (temperature 0.0)")
    llm = ui.registry.get(str(tmp_path / "models" / "micro"))
    assert isinstance(llm.generate([{"role": "user", "content": "the fox"}], max_new_tokens=4), str)

    rows = [[f"{w} fox?", f"the {w} fox"] for w in ("quick", "brown", "lazy", "wise", "old")]
    base = str(tmp_path / "models" / "micro")
    ui.start_finetune(TOKEN, base, None, rows, 2, 1, 6, 1e-3, "micro-tuned")
    views = poll_until(ui, lambda v: len(v[8]) == 2)
    assert "finetune `micro-tuned`: done" in views[6]
    prompts = [row[0] for row in views[8]]
    assert prompts == ["wise fox?", "old fox?"]  # the held-out rows, never trained on
    assert all(isinstance(cell, str) for row in views[8] for cell in row)


def test_the_tabs_build_inside_the_page(tmp_path):
    from webapp.chat import ChatService

    service = ChatService(ModelRegistry(tmp_path / "models"))
    with gr.Blocks() as demo:
        model = gr.Dropdown(service.models.choices(), value="default")
        with gr.Tabs():
            build_train_tabs(demo, service, model)
    labels = {getattr(block, "label", None) for block in demo.blocks.values()}
    assert {"Train", "Fine-tune", "Loss", "Sample temperature"} <= labels
