"""bench/load.py, shortened: honest clients chat and upload beside a hostile one; every honest
answer arrives, no canary crosses sessions, every hostile request is refused."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.webapp.conftest import ROOT


@pytest.mark.slow
def test_a_short_load_run_answers_everyone_leaks_nothing_and_refuses_the_hostile_client():
    done = subprocess.run(
        [sys.executable, "bench/load.py", "--seconds", "20", "--clients", "6"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "cross-session leaks: 0" in done.stdout
    assert ", failed 0 " in done.stdout and ", answered 0;" in done.stdout
    for refusal in ("the limit is 200", "reload the page", "none are indexed yet"):
        assert refusal in done.stdout
