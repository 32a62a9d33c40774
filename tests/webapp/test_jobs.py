"""The training job runner (`webapp.jobs`) and its input checks (`webapp.train_inputs`): real
`python -m core.train` subprocesses on a tiny model, stopped, resumed, killed and refused."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.core.train.conftest import TINY
from webapp.jobs import JobRunner, owner_hash
from webapp.train_inputs import (
    PRESETS,
    JobError,
    JobLimits,
    check_jsonl,
    check_model_size,
    check_text,
    decode_upload,
    parameters,
    pretrain_config,
)

# the core trainer tests' tiny shape, with a learning schedule for a few dozen steps
MICRO = {**TINY, "vocab_size": 300, "batch_size": 4, "lr": 1e-3, "warmup_steps": 2}
MICRO.update(eval_every=5, eval_steps=2)
ALICE, BOB = owner_hash("alice-token"), owner_hash("bob-token")


WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "wise", "owls")


def corpus(n_words: int = 12_000) -> str:
    """Plain words in a fixed order: enough text for a tiny model to learn something."""
    return " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(n_words))


def wait_for(predicate, timeout: float = 120.0, every: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


@pytest.fixture
def runner(tmp_path):
    made = JobRunner(tmp_path / "models", tmp_path / "jobs", JobLimits(max_minutes=5))
    yield made
    job = made.current()
    if job is not None:
        made.kill(job)


def start(runner: JobRunner, owner: str = ALICE, name: str = "micro", **settings) -> object:
    config = {**MICRO, "max_steps": 40, "save_every": 10, "data": ["corpus.txt"], **settings}
    extra = {"max_steps": config["max_steps"], "launch_step": 0}
    return runner.start(owner, "pretrain", name, config, {"corpus.txt": corpus()}, extra)


# --------------------------------------------------------------------------- input checks
def test_empty_text_is_refused():
    with pytest.raises(JobError, match="empty; paste or upload some text"):
        check_text("  \n\t ", JobLimits())


def test_a_500_mb_paste_is_refused_naming_the_cap():
    huge = "a" * (500 * 1024 * 1024)
    started = time.perf_counter()
    with pytest.raises(JobError, match=r"500\.0 MB.*at most 20\.0 MB \(SCRATCHGPT_TRAIN_MAX_MB\)"):
        check_text(huge, JobLimits())
    assert time.perf_counter() - started < 1.0  # refused by its length, never encoded or scanned


def test_binary_data_is_refused():
    with pytest.raises(JobError, match="binary data"):
        check_text("abc\x00\x01\x02" * 100, JobLimits())
    with pytest.raises(JobError, match="model.bin looks like binary data"):
        decode_upload("model.bin", b"PK\x03\x04\x00\x00" + bytes(range(256)), JobLimits())
    with pytest.raises(JobError, match=r"latin1\.txt is not UTF-8 text \(bad byte at offset 3\)"):
        decode_upload("latin1.txt", "café au lait".encode("latin-1"), JobLimits())


def test_jsonl_with_a_bad_line_names_the_line(tmp_path):
    good = json.dumps({"prompt": "Hi", "completion": "Hello"})
    text = f"{good}\n{good}\n{{not json\n{good}\n"
    with pytest.raises(JobError, match=r"^rows\.jsonl:3: invalid JSON"):
        check_jsonl(text, JobLimits(), "rows.jsonl", tmp_path)
    odd = f"{good}\n" + json.dumps({"question": "Hi"}) + "\n"
    with pytest.raises(JobError, match=r"^rows\.jsonl:2: unrecognised example"):
        check_jsonl(odd, JobLimits(), "rows.jsonl", tmp_path)
    assert not list(tmp_path.iterdir())  # the scratch copy is gone either way


def test_jsonl_in_all_three_shapes_and_the_row_cap(tmp_path):
    rows = [
        {"prompt": "2+2?", "completion": "4"},
        {"instruction": "Add", "input": "2 and 2", "output": "4"},
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    ]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    assert check_jsonl(text, JobLimits(), "ok.jsonl", tmp_path) == rows
    with pytest.raises(JobError, match="3 rows; this server fine-tunes on at most 2"):
        check_jsonl(text, JobLimits(max_rows=2), "ok.jsonl", tmp_path)


def test_presets_are_sized_and_a_model_past_the_cap_is_refused():
    tiny, small = (parameters(pretrain_config(PRESETS[p])) for p in ("tiny", "small"))
    assert 0 < tiny < small < 10_000_000
    big = parameters(pretrain_config({"arch": "classic", "n_layer": 48, "n_embd": 1024}))
    with pytest.raises(JobError, match=r"has 6\d\d\.\dM parameters; this server trains at most"):
        check_model_size(big, JobLimits(), "This model")


# --------------------------------------------------------------------------- real jobs
def test_a_job_runs_niced_and_thread_capped_then_stops_and_resumes(runner, tmp_path):
    job = start(runner)
    environ = Path(f"/proc/{job.pid}/environ").read_bytes().split(b"\0")
    assert b"OMP_NUM_THREADS=1" in environ
    niced = min(19, os.getpriority(os.PRIO_PROCESS, 0) + runner.limits.nice)
    assert runner.limits.nice == 19 and os.getpriority(os.PRIO_PROCESS, job.pid) == niced
    # in its own session it has its own autogroup, which shares the CPU equally unless niced
    # too; SCHED_IDLE leaves it what the server does not use (bench/train_contention.py)
    assert os.sched_getscheduler(job.pid) == os.SCHED_IDLE
    autogroup = Path(f"/proc/{job.pid}/autogroup")
    if autogroup.exists():
        assert autogroup.read_text().split()[-1] == "19"
    wait_for(lambda: (runner.current().checkpoint_step() or 0) >= 10)
    assert runner.stop(ALICE).status == "stopping"
    stopped = wait_for(lambda: (j := runner.current()).status == "stopped" and j)
    step = stopped.checkpoint_step()
    assert 10 <= step < 40 and "Resume continues it exactly" in stopped.message
    assert json.loads((Path(stopped.out) / "metrics.json").read_text())["stopped"] == "stop file"

    runner.resume(ALICE)
    done = wait_for(lambda: (j := runner.current()).status == "done" and j)
    steps = [e["step"] for e in done.events() if "loss" in e]
    assert steps == list(range(1, 41))  # the live log holds each step once, resumed or not
    assert done.checkpoint_step() == 40
    with pytest.raises(JobError, match="finished all its steps"):
        runner.resume(ALICE)


def test_one_job_per_server_and_a_reload_or_restart_reattaches(runner, tmp_path):
    start(runner, max_steps=400)
    with pytest.raises(JobError, match="Another user's training job .* one job at a time"):
        start(runner, owner=BOB, name="other")
    with pytest.raises(JobError, match="Your training job is still running"):
        start(runner, name="second")
    with pytest.raises(JobError, match="another user's; you cannot change it"):
        runner.stop(BOB)
    assert not (tmp_path / "models" / "other").exists()
    # a fresh runner on the same folders (a restarted server) sees the same running job
    again = JobRunner(tmp_path / "models", tmp_path / "jobs")
    seen = again.current()
    assert seen.status == "running" and seen.owner == ALICE and seen.name == "micro"
    again.stop(ALICE)
    assert wait_for(lambda: runner.current().status == "stopped")


def test_the_time_cap_stops_a_job_with_a_checkpoint(tmp_path):
    runner = JobRunner(tmp_path / "models", tmp_path / "jobs", JobLimits(max_minutes=0.05))
    start(runner, max_steps=100_000)
    job = wait_for(lambda: (j := runner.current()).status == "stopped" and j, timeout=180)
    assert "time budget" in job.message and job.checkpoint_step() > 0


def test_a_job_killed_mid_way_leaves_its_last_checkpoint_loadable(runner):
    from core.generate.engine import LLM

    job = start(runner, max_steps=400)
    wait_for(lambda: (runner.current().checkpoint_step() or 0) >= 10)
    os.kill(job.pid, signal.SIGKILL)
    killed = wait_for(lambda: (j := runner.current()).status == "killed" and j)
    assert "exit code -9" in killed.message and "checkpoint of step" in killed.message
    kept = killed.checkpoint_step()
    llm = LLM.load(killed.out)
    assert isinstance(llm.generate("the quick", max_new_tokens=5), str)
    runner.resume(ALICE)  # and training goes on from it
    assert wait_for(lambda: runner.current().checkpoint_step() > kept)


def test_a_name_in_use_or_unusable_is_refused(runner, tmp_path):
    (tmp_path / "models" / "taken").mkdir(parents=True)
    with pytest.raises(JobError, match="exists already"):
        start(runner, name="taken")
    with pytest.raises(JobError, match="not a usable model name"):
        start(runner, name="../escape")
    assert runner.current() is None
