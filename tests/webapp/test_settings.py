"""The app's settings and start-up as an operator meets them: every numeric setting checked with a
one-line refusal, a store another process holds (at start-up and on upload), hub models limited to
the host's list, and Gradio's upload cache cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from gradio_client import Client, handle_file

from tests.webapp.conftest import ROOT, start_app, stop_app
from webapp.chat import ChatService
from webapp.models import ModelRegistry
from webapp.ui import CACHE_CLEANUP, build_demo

HOLD_LOCK = """
import fcntl, os, sys, time
handle = open(sys.argv[1], "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as ingest.store does for its process
handle.truncate(0); handle.write(str(os.getpid())); handle.flush()
print("locked", flush=True)
time.sleep(600)
"""


@contextmanager
def store_held_elsewhere(store: Path):
    """Another process holding the embedded store's lock (a CLI or a second app)."""
    store.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(store / "ingest.lock")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def run_app(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    settings = {
        **os.environ,
        "SCRATCHGPT_DATA": str(tmp_path / "chroma"),
        "SCRATCHGPT_MODELS_DIR": str(tmp_path / "models"),
        "GRADIO_TEMP_DIR": str(tmp_path / "gradio"),
        "GRADIO_SERVER_PORT": "1",  # it must stop before it listens anywhere
        **env,
    }
    return subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=settings,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SCRATCHGPT_SESSION_TTL", "0"),  # the sweeper would sleep 0 s between sweeps: a spin
        ("SCRATCHGPT_SESSION_TTL", "an hour"),
        ("SCRATCHGPT_QUEUE_SIZE", "-1"),
        ("SCRATCHGPT_CONCURRENCY", "1.5"),
        ("SCRATCHGPT_MAX_UPLOAD_FILES", "0"),
        ("GRADIO_SERVER_PORT", "70000"),
    ],
)
def test_a_bad_numeric_setting_stops_the_app_with_one_line_naming_it(name, value, tmp_path):
    done = run_app(tmp_path, **{name: value})
    assert done.returncode == 1, done.stdout[-2000:]
    assert done.stderr.startswith(f"app.py: {name}={value!r}: must be a whole number"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "chroma").exists()  # nothing was set up before the check


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("SCRATCHGPT_SECRET", "too-short", "SCRATCHGPT_SECRET must be at least 32 characters"),
        ("SCRATCHGPT_HUB_MODELS", "org/ok-model, not a hub id", "'not a hub id' is not a hub id"),
    ],
)
def test_a_bad_secret_or_hub_list_stops_the_app_with_one_line(name, value, says, tmp_path):
    done = run_app(tmp_path, **{name: value})
    assert done.returncode == 1 and done.stderr.startswith("app.py: "), done.stderr
    assert says in done.stderr and done.stderr.count("\n") == 1


def test_start_up_with_a_store_another_process_holds_stops_with_one_line(tmp_path):
    with store_held_elsewhere(tmp_path / "chroma") as pid:
        done = run_app(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("app.py: The document store at "), done.stderr
    assert f"in use by another process (pid {pid})" in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_gradio_upload_cache_is_cleaned():
    demo = build_demo(ChatService(ModelRegistry("no-models-here")))
    assert demo.delete_cache == CACHE_CLEANUP == (3600, 3600)  # checked hourly, kept an hour


@pytest.fixture(scope="module")
def online_app(tmp_path_factory):
    """The app with the hub allowed (nowhere to reach: a refused download fails fast)."""
    running = start_app(
        tmp_path_factory.mktemp("online"),
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="http://127.0.0.1:9",
    )
    yield running
    stop_app(running)


def test_a_store_locked_by_another_process_is_named_in_the_upload_status(online_app, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("The ferry leaves at noon.")
    client = Client(online_app.url, verbose=False)
    key = client.predict(api_name="/new_session")
    with store_held_elsewhere(online_app.tmp / "chroma") as pid:
        status, table, *_ = client.predict([handle_file(notes)], session=key, api_name="/upload")
    assert status.startswith("❌ notes.txt: The document store at "), status
    assert f"in use by another process (pid {pid}); close that app or CLI" in status
    assert table["data"] == []
    status, table, *_ = client.predict([handle_file(notes)], session=key, api_name="/upload")
    assert status.startswith("✅ Added 'notes.txt'")  # once the other process is gone


def test_a_client_cannot_make_the_server_download_an_unlisted_hub_model(online_app):
    client = Client(online_app.url, verbose=False)
    started = time.monotonic()
    with pytest.raises(Exception, match="not one of this server's models") as refused:
        client.predict("Hello", model="someone/a-huge-model", api_name="/chat")
    assert "SCRATCHGPT_HUB_MODELS" in str(refused.value)
    assert time.monotonic() - started < 30  # refused at once, nothing fetched
    assert client.predict("Say hi.", max_new_tokens=4, api_name="/chat").strip()
