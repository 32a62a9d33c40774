"""Real PDFs for the tests, made with fpdf2 (text, images) and pypdf (encryption, built bombs)."""

from __future__ import annotations

import io
import zlib

from fpdf import FPDF
from PIL import Image
from pypdf import PdfWriter


def text_pdf(pages: list[str]) -> bytes:
    """One PDF page per string, Helvetica text; an empty string makes a page with no text."""
    pdf = FPDF()
    pdf.set_auto_page_break(auto=False)
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 5, text)
    return bytes(pdf.output())


def image_pdf(n_pages: int = 2) -> bytes:
    """A 'scanned' PDF: each page one raster image, no text layer."""
    pdf = FPDF()
    for i in range(n_pages):
        pdf.add_page()
        image = Image.new("RGB", (200, 100), (255, 255, 255 - 40 * i))
        pdf.image(image, x=10, y=10, w=100)
    return bytes(pdf.output())


def encrypted_pdf(algorithm: str) -> bytes:
    """A text PDF locked with a user password (RC4-128 or AES-256)."""
    writer = PdfWriter(clone_from=io.BytesIO(text_pdf(["Top secret quarterly numbers."])))
    writer.encrypt(user_password="secret", owner_password="owner", algorithm=algorithm)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def _zeros_deflated(n_bytes: int) -> bytes:
    """A zlib stream of ~n_bytes of content-stream filler, built by repeating one flushed block."""
    block = b"0 0 m " * (1 << 16)
    comp = zlib.compressobj(9)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(block) + comp.flush(
        zlib.Z_FULL_FLUSH
    )  # no header, no history: repeatable
    count = max(2, n_bytes // len(block))
    checksum = 1
    for _ in range(count):
        checksum = zlib.adler32(block, checksum)
    # b"\x03\x00" is an empty final fixed-Huffman block; the stream is byte-aligned after a full
    # flush.
    return first + again * (count - 1) + b"\x03\x00" + checksum.to_bytes(4, "big")


def flate_bomb_pdf(inflated_bytes: int = 2 << 30, layers: int = 3) -> bytes:
    """A one-page PDF whose content stream inflates to `inflated_bytes` via nested FlateDecode."""
    data = _zeros_deflated(inflated_bytes)
    for _ in range(layers - 1):
        data = zlib.compress(data, 9)
    filters = " ".join(["/FlateDecode"] * layers)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
        b"<< /Length %d /Filter [%s] >>\nstream\n" % (len(data), filters.encode())
        + data
        + b"\nendstream",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
