"""Child-process PDF text extraction: PDF bytes on stdin, one JSON object on stdout.

Run as a script (never imported by the parent), so the parent's modules are not re-imported here.
The memory limit is set before pypdf is imported; the parent enforces the wall-clock limit.
Usage: python _pdf_worker.py MAX_PAGES MEMORY_BYTES
"""

import json
import resource
import sys


def _limit_memory(max_bytes: int) -> None:
    if max_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))


def _extract(data: bytes, max_pages: int) -> dict:
    import io
    import logging

    logging.disable(logging.WARNING)  # pypdf logs every repair; the parent only needs the verdict
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError

    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                opened = reader.decrypt(
                    ""
                )  # owner-password-only PDFs open with an empty user password
            except (DependencyError, NotImplementedError, FileNotDecryptedError):
                opened = 0
            if not opened:
                return {"error": "encrypted"}
        n_pages = len(reader.pages)
    except LimitReachedError as exc:
        return {"error": "resource", "detail": str(exc)}
    except FileNotDecryptedError:
        return {"error": "encrypted"}
    except MemoryError:
        return {"error": "resource", "detail": "memory limit"}
    except Exception as exc:
        return {"error": "corrupt", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    if n_pages == 0:
        return {"error": "corrupt", "detail": "no pages"}
    if n_pages > max_pages:
        return {"error": "pages", "n_pages": n_pages}
    texts = []
    for page in reader.pages:
        try:
            contents = (
                page.get_contents()
            )  # extract_text() hides decompression limits: surface them
            if contents is not None:
                contents.get_data()
            texts.append(page.extract_text() or "")
        except LimitReachedError as exc:
            return {"error": "resource", "detail": str(exc)}
        except MemoryError:
            return {"error": "resource", "detail": "memory limit"}
        except Exception as exc:
            return {"error": "corrupt", "detail": f"{type(exc).__name__}: {exc}"[:300]}
    return {"pages": texts}


def main() -> None:
    max_pages, max_bytes = int(sys.argv[1]), int(sys.argv[2])
    data = sys.stdin.buffer.read()
    _limit_memory(max_bytes)
    try:
        result = _extract(data, max_pages)
    except MemoryError:
        result = {"error": "resource", "detail": "memory limit"}
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
