"""Ingest fixtures: one real embedder per session, a real Chroma server, stores on both backends."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ingest import Embedder, Store

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The packaged all-MiniLM-L6-v2, loaded once."""
    return Embedder(precision="fp32")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `chroma run` on 127.0.0.1; fails (never skips) with the reason if it cannot start."""
    chroma = shutil.which("chroma", path=str(VENV_BIN)) or shutil.which("chroma")
    if chroma is None:
        pytest.fail("the `chroma` CLI from the chromadb package is not installed")
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = open(data / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    cmd = [chroma, "run", "--path", str(data / "db"), "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(
                f"chroma run exited {proc.returncode}: {(data / 'server.log').read_text()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"chroma run did not answer on {url} within 60 s")
        time.sleep(0.2)
    yield ("127.0.0.1", port)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


_owner_counter = iter(range(10**6))


@pytest.fixture(params=["embedded", "server"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict:
    """Store keyword arguments for the embedded store (fresh dir) or the shared server."""
    if request.param == "embedded":
        return {"path": tmp_path / "store"}
    host, port = request.getfixturevalue("chroma_server")
    # the keyword index lives on this machine, beside nothing: keep it out of the repo's data/
    return {"host": host, "port": port, "keyword_path": tmp_path / "keyword"}


@pytest.fixture
def make_store(backend: dict, embedder: Embedder, request: pytest.FixtureRequest):
    """Open stores for unique owners on the chosen backend; closed at the end of the test."""
    opened: list[Store] = []
    base = f"{request.node.name}-{next(_owner_counter)}"

    def make(owner: str = "alice") -> Store:
        store = Store(f"{base}-{owner}", embedder=embedder, **backend)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
