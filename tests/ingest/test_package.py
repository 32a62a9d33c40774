"""The package boundary: a small public API, and no imports of `core` or `webapp`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import ingest


def test_public_api_is_exported():
    assert sorted(ingest.__all__) == sorted(set(ingest.__all__))
    for name in ingest.__all__:
        assert getattr(ingest, name) is not None


def test_ingest_never_imports_core_or_webapp():
    code = (
        "import sys, ingest, ingest.__main__\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('core', 'webapp')]\n"
        "assert not bad, bad\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for path in (root / "ingest").glob("*.py"):
        text = path.read_text()
        assert "import core" not in text and "from core" not in text, path
        assert "webapp" not in text, path
