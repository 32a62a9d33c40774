"""Package boundaries (DESIGN.md): core imports neither ingest, webapp nor gradio; ingest never
imports core; only webapp's UI layer imports gradio; training never imports the serving engine."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w.]*)", re.M)


def modules_of(package: str) -> list[str]:
    """Every module of a package, found on disk (so a new module is covered without listing it)."""
    names = [package]
    for info in pkgutil.walk_packages([str(ROOT / package.replace(".", "/"))], f"{package}."):
        names.append(info.name)
    return names


def imported_after(modules: list[str]) -> set[str]:
    """Top-level names in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def static_imports(folder: str) -> dict[Path, set[str]]:
    return {
        path: set(IMPORT.findall(path.read_text(encoding="utf-8")))
        for path in (ROOT / folder).rglob("*.py")
    }


def test_core_imports_neither_ingest_webapp_nor_gradio():
    loaded = imported_after([m for m in modules_of("core") if m != "core.__main__"])
    assert not {m for m in loaded if m.split(".")[0] in ("ingest", "webapp", "gradio", "recipes")}
    for path, names in static_imports("core").items():
        tops = {n.split(".")[0] for n in names}
        assert not tops & {"ingest", "webapp", "gradio", "recipes"}, path


def test_ingest_never_imports_core():
    loaded = imported_after(modules_of("ingest"))
    assert not {m for m in loaded if m.split(".")[0] in ("core", "webapp", "recipes")}


# the modules that lay out the page and turn its events into calls; the rest serve any client
UI_LAYER = {"ui", "handlers", "inspect", "fill_mask", "train_tab", "train_handlers", "history_tab"}
SERVICES = ["chat", "documents", "models", "history", "sessions", "inspect_runs", "jobs"]


def test_only_the_ui_layer_of_webapp_imports_gradio():
    for path, names in static_imports("webapp").items():
        if path.stem not in UI_LAYER:
            assert not any(n.split(".")[0] == "gradio" for n in names), path
    services = [f"webapp.{m}" for m in SERVICES if (ROOT / "webapp" / f"{m}.py").exists()]
    assert "gradio" not in imported_after(services)


def test_training_never_imports_the_serving_engine():
    loaded = imported_after(modules_of("core.train"))
    assert "core.train.loop" in loaded
    assert "core.generate.engine" not in loaded and "core.kernels" not in loaded
