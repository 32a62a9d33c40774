"""The CLI: add with a progress bar, list, query, delete; user errors are one line and exit 1."""

from __future__ import annotations

from ingest.__main__ import main
from tests.ingest.pdfs import text_pdf


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
