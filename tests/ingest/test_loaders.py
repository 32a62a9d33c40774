"""Loaders: real PDFs with known pages, text encodings, and every bad input's typed error."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from ingest import (
    FileLimits,
    FileTooLargeError,
    NoTextLayerError,
    PdfResourceError,
    UnsupportedTypeError,
    load_document,
)
from ingest.loaders import safe_name
from tests.ingest.helpers import bad_inputs
from tests.ingest.pdfs import image_pdf, text_pdf

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cases():
    return bad_inputs()


def test_pdf_pages_keep_their_numbers_and_empty_pages_are_reported():
    data = text_pdf(["Alpha: the first page.", "", "Gamma: the third page.", ""])
    doc = load_document(data, name="report.pdf")
    assert doc.kind == "pdf"
    assert [(p.page_number, p.text.strip()) for p in doc.pages] == [
        (1, "Alpha: the first page."),
        (3, "Gamma: the third page."),
    ]
    assert doc.empty_pages == [2, 4]
    assert "pages 2, 4" in doc.warnings[0]


def test_every_bad_input_gets_its_typed_error_with_bounded_memory(cases):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for name, data, expected in cases:
        if expected is None:
            doc = load_document(data, name=name)
            assert doc.pages and all(p.text.strip() for p in doc.pages)
            continue
        with pytest.raises(expected) as info:
            load_document(data, name=name)
        message = str(info.value)
        assert name.split("/")[-1] in message, message  # names the file
        assert ";" in message and len(message) > 40, message  # says what to do about it
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 150, f"the test process grew {grown_mib:.0f} MiB"


CHILD_PEAK = """
import resource
from ingest import IngestError, load_document
from tests.ingest.helpers import bad_inputs
for name, data, _ in bad_inputs():
    try:
        load_document(data, name=name)
    except IngestError:
        pass
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def test_pdf_parsing_children_stay_under_the_memory_limit():
    """RUSAGE_CHILDREN covers every child a process ever waited for (in a full test run that
    includes model-loading CLIs), so the PDF children are measured from a fresh process."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD_PEAK], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    child_mib = int(proc.stdout.split()[-1]) / 1024
    assert child_mib < FileLimits().memory_bytes / 2**20, f"a PDF child used {child_mib:.0f} MiB"


def test_scanned_pdf_error_names_the_pages():
    with pytest.raises(NoTextLayerError) as info:
        load_document(image_pdf(3), name="scan.pdf")
    assert info.value.empty_pages == [1, 2, 3]
    assert "pages 1, 2, 3" in str(info.value) and "OCR" in str(info.value)


def test_text_files_index_safely_with_warnings(cases):
    docs = {name: load_document(data, name=name) for name, data, exp in cases if exp is None}
    assert docs["nul.txt"].pages[0].text == "Before the nul byte, the harbour was quiet."
    assert "NUL" in docs["nul.txt"].warnings[0]
    assert docs["latin.txt"].pages[0].text == "Café crème, “smart quotes” – naïve."
    assert "cp1252" in docs["latin.txt"].warnings[0]
    assert docs["../../x.pdf"].source == "x.pdf"


@pytest.mark.parametrize(
    "encoded",
    [
        "Ünïcödé text — fine.".encode(),
        b"\xef\xbb\xbf" + "Ünïcödé text — fine.".encode(),
        "Ünïcödé text — fine.".encode("utf-16"),  # with BOM
        "Ünïcödé text — fine.".encode("utf-16-be").join([b"\xfe\xff", b""]),
    ],
    ids=["utf8", "utf8-bom", "utf16-le-bom", "utf16-be-bom"],
)
def test_text_encodings(encoded):
    doc = load_document(encoded, name="notes.md")
    assert doc.pages[0].text == "Ünïcödé text — fine." and not doc.warnings


def test_form_feeds_are_page_breaks():
    doc = load_document(b"page one\fpage two\f\fpage four", name="a.txt")
    assert [(p.page_number, p.text) for p in doc.pages] == [
        (1, "page one"),
        (2, "page two"),
        (4, "page four"),
    ]
    assert doc.empty_pages == [3]


def test_type_is_decided_by_content_as_well_as_name():
    pdf = text_pdf(["Hidden behind a .txt name."])
    assert load_document(pdf, name="actually-a-pdf.txt").kind == "pdf"
    with pytest.raises(UnsupportedTypeError, match="unsupported type"):
        load_document(b"PK-like but not really", name="slides.pptx")
    with pytest.raises(UnsupportedTypeError, match="ZIP"):
        load_document(b"PK\x03\x04rest of a docx", name="letter.txt")
    with pytest.raises(UnsupportedTypeError, match="UTF-16"):
        load_document("no bom here".encode("utf-16-le"), name="wide.txt")


def test_size_limit_and_time_limit(tmp_path):
    with pytest.raises(FileTooLargeError, match="MB limit"):
        load_document(b"x" * 2048, name="big.txt", limits=FileLimits(max_bytes=1024))
    path = tmp_path / "big.txt"
    path.write_bytes(b"y" * 2048)
    with pytest.raises(FileTooLargeError):
        load_document(path, limits=FileLimits(max_bytes=1024))
    with pytest.raises(PdfResourceError, match="longer than"):
        load_document(text_pdf(["slow"]), name="s.pdf", limits=FileLimits(timeout_s=0.01))


def test_a_tight_memory_limit_stops_the_parser():
    data = text_pdf(["Memory-hungry parser run."])
    with pytest.raises(PdfResourceError):
        load_document(data, name="m.pdf", limits=FileLimits(memory_bytes=32 * 2**20))


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("../../x.pdf", "x.pdf"),
        ("..\\..\\windows\\y.txt", "y.txt"),
        ("/etc/passwd", "passwd"),
        ("bad\x00na\nme.md", "badname.md"),
        ("", "document"),
    ],
)
def test_safe_name(raw, safe):
    assert safe_name(raw) == safe
