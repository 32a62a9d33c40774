"""The repo runs unchanged as a Hugging Face Space: front matter, pins, and runtime imports that
requirements.txt alone provides (a Space installs nothing else)."""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import gradio
import yaml

ROOT = Path(__file__).resolve().parents[2]
RUNTIME = [
    ROOT / "app.py",
    ROOT / "offline.py",
    *(ROOT / "webapp").rglob("*.py"),
    *(ROOT / "ingest").rglob("*.py"),
    *(p for p in (ROOT / "core").rglob("*.py") if "recipes" not in p.parts),
]
LOCAL = {"core", "ingest", "webapp", "tests", "bench", "offline", "recipes"}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Space's YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def requirements() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name = re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0]
            pins[metadata.distribution(name).metadata["Name"].lower()] = line
    return pins


def closure(names: set[str]) -> set[str]:
    """The distributions `names` pull in, transitively (as pip would install them)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.distribution(name).requires or []:
            if "extra ==" in req:
                continue
            dep = re.split(r"[<>=!~\[ ;(]", req, maxsplit=1)[0].lower()
            try:
                todo.append(metadata.distribution(dep).metadata["Name"].lower())
            except metadata.PackageNotFoundError:
                continue  # an optional or platform-specific dependency not installed here
    return seen


def test_front_matter_describes_a_gradio_space():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and (ROOT / "app.py").exists()
    assert meta["sdk_version"] == gradio.__version__ == requirements()["gradio"].split("==")[1]
    assert meta["license"] and meta["title"]


def test_runtime_imports_come_from_requirements_txt():
    provided = closure(set(requirements()))
    owners = metadata.packages_distributions()
    missing = {}
    for path in RUNTIME:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in LOCAL or top in sys.stdlib_module_names:
                    continue
                dists = {d.lower() for d in owners.get(top, [])}
                if not dists & provided:
                    missing.setdefault(top, []).append(str(path.relative_to(ROOT)))
    assert not missing, f"imported at run time but not installed by requirements.txt: {missing}"
