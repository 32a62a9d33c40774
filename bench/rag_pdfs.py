"""The answer benchmark's PDFs: Debian's gnuplot and Asymptote manuals, which nobody here wrote.

    python bench/rag_pdfs.py      # fetch (apt-get download + dpkg-deb -x) into data/manuals/

`manuals()` returns {file name: path}, fetching what is missing; it needs apt and the network once.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANUALS_DIR = ROOT / "data" / "manuals"
PACKAGES = {"gnuplot.pdf": "gnuplot-doc", "asymptote.pdf": "asymptote-doc"}  # file -> package


class ManualsUnavailableError(RuntimeError):
    """The benchmark PDFs are absent and could not be fetched; the message says how to get them."""


def _how_to(name: str) -> str:
    package = PACKAGES[name]
    return (
        f"{name} is missing from {MANUALS_DIR}. Fetch it with: "
        f"apt-get update && (cd /tmp && apt-get download {package}) && "
        f"dpkg-deb -x /tmp/{package}_*.deb /tmp/{package} && "
        f"cp /tmp/{package}/usr/share/doc/*/{name}* {MANUALS_DIR}/ (gunzip it if it ends in .gz)."
    )


def _run(*cmd: str, cwd: Path | None = None) -> bool:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _download(package: str, into: Path) -> Path | None:
    """The package's .deb in `into`, running `apt-get update` once if apt does not know it."""
    for attempt in range(2):
        if _run("apt-get", "download", package, cwd=into):
            debs = sorted(into.glob(f"{package}_*.deb"))
            if debs:
                return debs[-1]
        if attempt == 0 and not _run("apt-get", "update"):
            return None
    return None


def fetch(name: str) -> Path:
    """Download the Debian package holding `name`, extract the PDF into data/manuals/."""
    package, target = PACKAGES[name], MANUALS_DIR / name
    MANUALS_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        deb = _download(package, tmp_dir)
        if deb is None or not _run("dpkg-deb", "-x", str(deb), str(tmp_dir / "root")):
            raise ManualsUnavailableError(_how_to(name))
        found = sorted(
            p for p in (tmp_dir / "root").rglob(f"{name}*") if p.is_file() and not p.is_symlink()
        )
        if not found:
            raise ManualsUnavailableError(f"{package} holds no {name}. " + _how_to(name))
        source = found[0]
        if source.suffix == ".gz":
            with gzip.open(source) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copyfile(source, target)
    return target


def manuals() -> dict[str, Path]:
    """{file name: path} of both manuals, fetching the missing ones (ManualsUnavailableError)."""
    paths = {}
    for name in PACKAGES:
        path = MANUALS_DIR / name
        paths[name] = path if path.is_file() and path.stat().st_size else fetch(name)
    return paths


if __name__ == "__main__":
    for name, path in manuals().items():
        print(f"{name}: {path} ({path.stat().st_size} bytes)")
