"""The CLI: add with a progress bar, list, query, delete; user errors are one line and exit 1;
`list` and `delete` never load the embedding model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ingest.__main__ import main
from tests.ingest.pdfs import text_pdf

ROOT = Path(__file__).resolve().parents[2]


def test_add_list_query_delete(tmp_path, capsys):
    store = ["--store", str(tmp_path / "store"), "--collection", "cli"]
    good = tmp_path / "harbour.pdf"
    good.write_bytes(text_pdf(["The harbour master logs every arriving ship.", "Tides at noon."]))
    bad = tmp_path / "fake.pdf"
    bad.write_bytes(b"this is not a pdf at all")
    assert main([*store, "add", str(good), str(bad)]) == 1  # one bad file: reported, others added
    out, err = capsys.readouterr()
    assert "Added 'harbour.pdf': 2 pages" in out
    assert "error: 'fake.pdf' is named .pdf but is not a PDF" in err
    assert "chunk" in err  # the tqdm progress bar
    assert main([*store, "add", str(good)]) == 0
    assert "already indexed" in capsys.readouterr().out
    assert main([*store, "list"]) == 0
    assert "2 pages" in capsys.readouterr().out
    assert main([*store, "query", "who records the ships?", "-k", "1"]) == 0
    assert "1. [" in (out := capsys.readouterr().out) and "harbour.pdf p.1" in out
    assert main([*store, "delete", "nothing.pdf"]) == 1
    assert "No document 'nothing.pdf'" in capsys.readouterr().err
    assert main([*store, "delete", "harbour.pdf"]) == 0
    assert main([*store, "list"]) == 0 and capsys.readouterr().out.count("pages") == 0


def test_query_modes_and_explain(tmp_path, capsys):
    store = ["--store", str(tmp_path / "store"), "--collection", "cli"]
    notes = tmp_path / "notes.txt"
    notes.write_text("Set the zorbulate depth with --zorbulate-depth.\fTides flood the quay.")
    assert main([*store, "add", str(notes)]) == 0
    capsys.readouterr()
    assert main([*store, "query", "zorbulate depth", "--mode", "keyword", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "1. [" in out and "notes.txt p.1" in out and "p.2" not in out  # keyword: p.2 lacks it
    assert "why: dense 0." in out and "(not ranked)" in out  # keyword mode: cosine, no rank
    assert "keyword #1" in out and "(keyword)" in out
    assert main([*store, "query", "?!?", "--explain"]) == 1
    assert "no letters or digits" in capsys.readouterr().err
    assert main([*store, "query", "tides", "--mode", "hybrid+rerank", "--reranker", "nope"]) == 1
    assert "Unknown reranker 'nope'" in capsys.readouterr().err


def _cli_in_child(*args: str) -> dict:
    code = (
        "import json, sys\n"
        "from ingest.__main__ import main\n"
        f"rc = main({list(args)!r})\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers')\n"
        "         if m in sys.modules]\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    return {**json.loads(lines[-1]), "out": "\n".join(lines[:-1]), "err": proc.stderr}


def test_list_and_delete_do_not_load_the_embedder(tmp_path, embedder):
    from ingest import Store

    with Store("cli", path=tmp_path / "store", embedder=embedder) as indexed:
        indexed.add_file(b"The harbour master logs every arriving ship.", name="harbour.txt")
    store = ["--store", str(tmp_path / "store"), "--collection", "cli"]
    listed = _cli_in_child(*store, "list")
    assert listed["rc"] == 0 and "harbour.txt" in listed["out"] and listed["heavy"] == []
    assert "Loading" not in listed["err"]  # no model loading bars
    deleted = _cli_in_child(*store, "delete", "harbour.txt")
    assert deleted["rc"] == 0 and "Deleted 'harbour.txt': 1 chunks." in deleted["out"]
    assert deleted["heavy"] == []
    assert _cli_in_child(*store, "list")["out"] == ""
