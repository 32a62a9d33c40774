"""Load test (issue 22): honest `gradio_client` clients chat, ask RAG questions and upload small
text files for a while, and one hostile client sends oversized histories (straight to the page's
private chat event, as a browser would), forged session keys and other clients' Gradio session
hashes. Each honest client uploads its own canary sentence and checks that no other client's
canary ever appears in its answers or document list.

Prints answers ok / failed, cross-session leaks (must be 0), the server's resident memory (peak),
and the hostile client's error messages. Exits 1 when an honest answer failed, a canary leaked, or
a hostile request was answered.

    .venv/bin/python bench/load.py                 # 16 clients for 120 s against its own app.py
    .venv/bin/python bench/load.py --seconds 60 --max-new-tokens 8
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gradio_client import Client, handle_file

ROOT = Path(__file__).resolve().parents[1]


class Tally:
    """What every client saw, counted under one lock."""

    def __init__(self, canaries: list[str]) -> None:
        self.canaries, self.lock = canaries, threading.Lock()
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.hostile: Counter[str] = Counter()
        self.leaks: list[str] = []
        self.latencies: list[float] = []
        self.hashes: list[str] = []  # honest clients' Gradio session hashes, for the hostile one

    def add(self, what: str, seconds: float | None = None) -> None:
        with self.lock:
            self.counts[what] += 1
            if seconds is not None:
                self.latencies.append(seconds)

    def fail(self, what: str, err: BaseException) -> None:
        with self.lock:
            self.counts[f"{what} failed"] += 1
            self.failures[first_line(err)] += 1

    def check(self, who: str, text: str, own: str | None) -> None:
        """A leak: any canary but `own` in what `who` was shown."""
        for canary in self.canaries:
            if canary != own and canary in text:
                with self.lock:
                    self.leaks.append(f"{who} saw {canary}")


def first_line(err: BaseException | str) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:160]


def honest(i: int, url: str, until: float, tally: Tally, tmp: Path, max_new: int) -> None:
    canary, who = tally.canaries[i], f"client {i}"
    client = Client(url, verbose=False)
    key = client.predict(api_name="/new_session")
    with tally.lock:
        tally.hashes.append(client.session_hash)

    def upload(name: str, text: str) -> None:
        path = tmp / name
        path.write_text(text)
        began = time.monotonic()
        try:
            status, table, *_ = client.predict([handle_file(path)], session=key, api_name="/upload")
        except Exception as err:
            tally.fail("upload", err)
            return
        tally.check(who, status + json.dumps(table), canary)
        names = [row[0] for row in table["data"]]
        ok = status.startswith("✅") and all(n.startswith(f"client-{i}-") for n in names)
        tally.add("upload ok" if ok else "upload refused", time.monotonic() - began)

    def ask(what: str, question: str, **kwargs) -> None:
        began = time.monotonic()
        try:
            answer = client.predict(
                question, session=key, max_new_tokens=max_new, api_name="/chat", **kwargs
            )
        except Exception as err:
            tally.fail(what, err)
            return
        tally.check(who, answer, canary)
        if not answer.strip():
            tally.fail(what, "an empty answer")
            return
        tally.add(what, time.monotonic() - began)
        if what == "rag" and canary in answer:
            tally.add("rag cited own canary")

    upload(f"client-{i}-canary.txt", f"The canary word of client {i} is {canary}.")
    turn = 0
    while time.monotonic() < until:
        turn += 1
        if turn % 3 == 0:
            ask("rag", f"What is the canary word of client {i}?", template="rag")
        elif turn % 5 == 0:
            upload(f"client-{i}-note-{turn}.txt", f"Note {turn} of client {i}: the sky is clear.")
        else:
            ask("chat", f"Name a colour, client {i}.")


class RawPage:
    """The page's private chat event, called as a browser calls it (by dependency id), with any
    history the caller likes; a refusal raises with the server's message."""

    def __init__(self, url: str) -> None:
        config = httpx.get(f"{url}/config", timeout=30).json()
        components = {c["id"]: c for c in config["components"]}
        respond = next(d for d in config["dependencies"] if d.get("api_name") == "respond")
        self.url, self.fn_index, self.inputs = url, respond["id"], respond["inputs"]
        self.defaults = {i: components[i]["props"].get("value") for i in self.inputs}
        self.roles = {
            i: components[i]["props"].get("elem_id") or components[i]["type"] for i in self.inputs
        }

    def respond(self, message: str, history: list[dict], key: str) -> str:
        given = {"message": message, "chatbot": history, "browserstate": key}
        data = [given.get(self.roles[i], self.defaults[i]) for i in self.inputs]
        session = secrets.token_hex(8)  # no cookie kept, as a bare HTTP client sends
        joined = httpx.post(
            f"{self.url}/gradio_api/queue/join",
            json={"data": data, "fn_index": self.fn_index, "session_hash": session},
            timeout=300,
        )
        joined.raise_for_status()
        with httpx.stream(
            "GET",
            f"{self.url}/gradio_api/queue/data",
            params={"session_hash": session},
            timeout=300,
        ) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    output = message.get("output") or {}
                    if not message.get("success"):
                        raise RuntimeError(output.get("error") or "Error")
                    return output.get("data")
        raise RuntimeError("the event stream ended without a result")


def hostile(url: str, until: float, tally: Tally) -> None:
    """Oversized histories, forged keys, and others' Gradio session hashes, round after round."""
    client = Client(url, verbose=False)
    key = client.predict(api_name="/new_session")
    body, signature = key.split(".")
    forged = f"{body}.{signature[::-1]}"
    page = RawPage(url)
    note = Path(tempfile.mkdtemp()) / "hostile.txt"
    note.write_text("A hostile note.")

    def turn(role: str, text: str) -> dict:  # as the page's Chatbot sends a message
        return {"role": role, "content": [{"type": "text", "text": text}]}

    pair = [turn("user", "hello"), turn("assistant", "hi")]

    def attempt(what: str, call, *args, **kwargs) -> None:
        try:
            shown, answered = json.dumps(call(*args, **kwargs)), True
        except Exception as err:
            shown, answered = first_line(err), False
        tally.check("the hostile client", shown, None)
        with tally.lock:
            tally.counts["hostile"] += 1
            tally.counts["hostile answered"] += answered
            tally.hostile[f"{what}: {'ANSWERED ' + shown[:80] if answered else shown}"] += 1

    long_turn = [turn("user", "x" * 300_000)]
    rounds = 0
    while time.monotonic() < until:
        rounds += 1
        attempt("600 turn pairs", page.respond, "Hi", pair * 600, key)
        attempt("a 300k-character turn", page.respond, "Hi", long_turn, key)
        attempt("history with a forged key", page.respond, "Hi", pair, forged)
        rag = {"template": "rag", "api_name": "/chat"}
        attempt("/chat with a forged key", client.predict, "Canary?", session=forged, **rag)
        attempt(
            "/upload with a forged key",
            client.predict,
            [handle_file(note)],
            session=forged,
            api_name="/upload",
        )
        with tally.lock:
            victims = list(tally.hashes)
        if victims:
            thief = Client(url, verbose=False)
            thief.session_hash = victims[rounds % len(victims)]
            attempt("/chat rag with another's session hash", thief.predict, "Canary?", **rag)
            attempt(
                "/upload with another's session hash",
                thief.predict,
                [handle_file(note)],
                session="",
                api_name="/upload",
            )
        time.sleep(0.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(tmp: Path, max_new: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {
        **os.environ,
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "SCRATCHGPT_DATA": str(tmp / "chroma"),
        "SCRATCHGPT_MODELS_DIR": str(tmp / "models"),
        "SCRATCHGPT_MAX_NEW_TOKENS": str(max_new),
        "SCRATCHGPT_QUEUE_SIZE": "64",
    }
    log = (tmp / "app.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"app.py exited {proc.returncode}: {(tmp / 'app.log').read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.5)
    proc.kill()
    sys.exit("app.py did not listen within 300 s")


def memory_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def report(tally: Tally, seconds: float, clients: int, rss: tuple[float, float]) -> int:
    c = tally.counts
    honest_ok = c["chat"] + c["rag"] + c["upload ok"]
    failed = c["chat failed"] + c["rag failed"] + c["upload failed"]
    lat = sorted(tally.latencies) or [0.0]
    print(f"load test: {clients} honest clients + 1 hostile for {seconds:.0f} s")
    print(
        f"honest answers: ok {honest_ok}, failed {failed} (chat {c['chat']}, rag {c['rag']} "
        f"[own canary cited {c['rag cited own canary']}], uploads {c['upload ok']}, "
        f"uploads refused {c['upload refused']})"
    )
    for message, n in tally.failures.most_common():
        print(f"  failed {n} x: {message}")
    print(
        f"latency: median {statistics.median(lat):.1f} s, "
        f"p95 {lat[int(0.95 * (len(lat) - 1))]:.1f} s, max {lat[-1]:.1f} s"
    )
    print(f"cross-session leaks: {len(tally.leaks)}")
    for leak in tally.leaks[:10]:
        print(f"  {leak}")
    print(f"server RSS: at start {rss[0]:.0f} MiB, peak {rss[1]:.0f} MiB (VmHWM)")
    print(f"hostile requests: {c['hostile']}, answered {c['hostile answered']}; errors seen:")
    for message, n in sorted(tally.hostile.items()):
        print(f"  {n:3d} x {message}")
    return int(bool(failed or tally.leaks or c["hostile answered"] or not honest_ok))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scratchgpt-load-"))
    proc, url = start_app(tmp, args.max_new_tokens)
    try:
        Client(url, verbose=False).predict("Warm up.", max_new_tokens=2, api_name="/chat")
        rss_start = memory_mib(proc.pid, "VmRSS")
        tally = Tally(
            [f"CANARY-{i:02d}-{secrets.token_hex(4).upper()}" for i in range(args.clients)]
        )
        until = time.monotonic() + args.seconds
        with ThreadPoolExecutor(args.clients + 1) as pool:
            jobs = [
                pool.submit(honest, i, url, until, tally, tmp, args.max_new_tokens)
                for i in range(args.clients)
            ]
            jobs.append(pool.submit(hostile, url, until, tally))
            for job in jobs:
                job.result()
        status = report(
            tally, args.seconds, args.clients, (rss_start, memory_mib(proc.pid, "VmHWM"))
        )
    finally:
        proc.terminate()
        proc.wait(30)
    sys.exit(status)


if __name__ == "__main__":
    main()
