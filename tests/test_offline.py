"""Offline and telemetry switches are set in one place (`offline.apply`) by the entry points, and
never as a side effect of building a component: where the packaged model is absent (a Space), the
hub stays usable after the embedder is built."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import offline

ROOT = Path(__file__).resolve().parents[1]
SETS_ENV = re.compile(r"os\.environ\[[^]]+\]\s*=|os\.environ\.(setdefault|update)|os\.putenv")
ENTRY_POINTS = ["app.py", "core/__main__.py", "ingest/__main__.py", "recipes/__main__.py"]


def _run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in offline.TELEMETRY_OFF}
    clean.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_building_the_embedder_leaves_the_hub_switch_alone():
    code = (
        "import offline, os\n"
        "offline.apply(hub_offline=False)\n"  # what a Space gets: no packaged model
        "from ingest import Embedder\n"
        "Embedder().encode(['a page'])\n"
        "from core.load import hub_offline\n"
        "print(os.environ.get('HF_HUB_OFFLINE'), hub_offline())\n"
    )
    assert _run(code) == "None False"


def test_the_hub_is_off_where_the_packaged_model_is_installed_and_a_user_value_wins():
    code = (
        "import offline; v = offline.apply(); print(v['HF_HUB_OFFLINE'], v['ANONYMIZED_TELEMETRY'])"
    )
    assert offline.packaged_model_installed()
    assert _run(code) == "1 False"
    assert _run(code, HF_HUB_OFFLINE="0", ANONYMIZED_TELEMETRY="True") == "0 True"


def test_only_offline_py_sets_the_environment_and_every_entry_point_calls_it_first():
    for path in [
        *ROOT.glob("core/**/*.py"),
        *ROOT.glob("ingest/**/*.py"),
        *ROOT.glob("webapp/**/*.py"),
        *ROOT.glob("recipes/**/*.py"),
        ROOT / "app.py",
    ]:
        assert not SETS_ENV.search(path.read_text(encoding="utf-8")), path
    for name in ENTRY_POINTS:
        text = (ROOT / name).read_text(encoding="utf-8")
        first_import = re.search(r"^(?:from|import) (?!__future__)(\S+)", text, re.M)
        assert first_import and first_import.group(1) in ("offline", "argparse", "os", "sys"), name
        assert "offline.apply(" in text, name
        before = text[: text.index("offline.apply(")]
        assert not re.search(r"^(?:from|import) (core|ingest|webapp|recipes|gradio)", before, re.M)
