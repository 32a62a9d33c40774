"""Time from `make run` to the first answer, and the app's peak memory (stdlib only: it runs
before `make` has built the venv).

    python3 bench/first_answer.py            # in a fresh clone: includes installing .venv
    python3 bench/first_answer.py --port 7861

Prints: seconds until the port listens, until the first streamed piece, until the full answer, and
the app process's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"


def children(pid: int) -> list[int]:
    """All descendant pids of `pid` (from /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def ask(url: str, question: str) -> tuple[float, str]:
    """Call /chat over Gradio's REST API; (seconds to the first streamed piece, final text)."""
    info = json.load(urllib.request.urlopen(f"{url}/gradio_api/info", timeout=60))
    params = info["named_endpoints"]["/chat"]["parameters"]
    data = [question] + [p.get("parameter_default") for p in params[1:]]  # the API's own defaults
    body = json.dumps({"data": data}).encode()
    req = urllib.request.Request(
        f"{url}/gradio_api/call/chat", body, {"Content-Type": "application/json"}
    )
    event = json.load(urllib.request.urlopen(req, timeout=600))["event_id"]
    start, first, last = time.perf_counter(), None, ""
    with urllib.request.urlopen(f"{url}/gradio_api/call/chat/{event}", timeout=600) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("event: error"):
                raise RuntimeError(
                    f"the app answered with an error: {stream.read().decode()[:500]}"
                )
            if line.startswith("data:") and line[5:].strip() not in ("", "null"):
                first = first or time.perf_counter() - start
                last = json.loads(line[5:])[0]
    return first or 0.0, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(args.port)}
    start = time.perf_counter()
    log = open(ROOT / "first_answer.log", "w")  # noqa: SIM115 (open for the app's whole life)
    make = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        while True:
            if make.poll() is not None:
                raise SystemExit(f"make run exited {make.returncode}; see first_answer.log")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", args.port)) == 0:
                    break
            time.sleep(0.5)
        listening = time.perf_counter() - start
        url = f"http://127.0.0.1:{args.port}"
        asked = time.perf_counter()
        first, answer = ask(url, QUESTION)
        total = time.perf_counter() - start
        apps = [p for p in children(make.pid) if "app.py" in Path(f"/proc/{p}/cmdline").read_text()]
        peak = max((peak_kib(p) for p in apps), default=0) / 1024
        print(
            "| step | seconds since `make run` |\n|---|---|\n"
            f"| listening on {url} | {listening:.1f} |"
        )
        print(f"| first streamed piece of the first answer | {asked - start + first:.1f} |")
        print(f"| full first answer | {total:.1f} |\n\napp peak RSS (VmHWM): {peak:.0f} MiB")
        print(f"answer: {answer!r}")
    finally:
        os.killpg(make.pid, signal.SIGTERM)
        make.wait(timeout=60)


if __name__ == "__main__":
    main()
