"""Small helpers shared by the ingest tests."""

from __future__ import annotations

from ingest import Store


def snapshot(store: Store) -> dict[str, tuple[str, dict]]:
    """Every chunk in the store's collection: id -> (text, metadata)."""
    got = store.collection.get(include=["documents", "metadatas"])
    return {
        cid: (text, dict(meta))
        for cid, text, meta in zip(got["ids"], got["documents"], got["metadatas"], strict=True)
    }


def bad_inputs() -> list[tuple[str, bytes, type[Exception] | None]]:
    """(upload name, bytes, expected error or None where indexing it safely is right)."""
    import random
    import sys
    from pathlib import Path

    from ingest import (
        CorruptPdfError,
        EmptyFileError,
        EncryptedPdfError,
        NotAPdfError,
        NoTextLayerError,
        PageLimitError,
        PdfResourceError,
        UnsupportedTypeError,
    )
    from tests.ingest.pdfs import encrypted_pdf, flate_bomb_pdf, image_pdf, text_pdf

    good = text_pdf(["A perfectly ordinary page about lighthouses.", "Second page on tides."])
    rng = random.Random(4)
    return [
        ("empty.txt", b"", EmptyFileError),
        ("blank.md", b"  \n\t\n", EmptyFileError),
        ("random.pdf", bytes(rng.getrandbits(8) for _ in range(4096)), NotAPdfError),
        ("truncated.pdf", good[: len(good) // 3], CorruptPdfError),
        ("rc4.pdf", encrypted_pdf("RC4-128"), EncryptedPdfError),
        ("aes.pdf", encrypted_pdf("AES-256"), EncryptedPdfError),
        ("scan.pdf", image_pdf(3), NoTextLayerError),
        ("bomb.pdf", flate_bomb_pdf(), PdfResourceError),
        ("long.pdf", text_pdf(["x"] * 1001), PageLimitError),
        ("program.md", Path(sys.executable).resolve().read_bytes()[:65536], UnsupportedTypeError),
        ("nul.txt", b"Before the nul\x00 byte, the harbour was quiet.\x00", None),
        ("latin.txt", "Café crème, “smart quotes” – naïve.".encode("cp1252"), None),
        ("../../x.pdf", good, None),
    ]
