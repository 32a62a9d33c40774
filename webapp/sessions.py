"""Session keys the server issues and the client cannot choose: 32 random bytes and their
HMAC-SHA256 under the server's secret (one per process, or `SCRATCHGPT_SECRET`).

The page keeps its key in the browser (`gr.BrowserState`) and sends it with every event that
touches documents or answers; `gradio_client` callers ask `/new_session` for one. A key is checked
in constant time; only a key this server signed names a session in `webapp.documents.Library`.
Issuing keeps no state, so asking for keys costs the server nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

KEY_BYTES = 32
MIN_SECRET_CHARS = 32


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionKeys:
    """Issue and verify signed session keys ("<random>.<signature>", URL-safe base64)."""

    def __init__(self, secret: str | bytes | None = None) -> None:
        if isinstance(secret, str):
            secret = secret.encode()
        if secret is not None and len(secret) < MIN_SECRET_CHARS:
            raise ValueError(f"must be at least {MIN_SECRET_CHARS} characters long")
        self._secret = secret or secrets.token_bytes(KEY_BYTES)

    def _sign(self, raw: bytes) -> bytes:
        return hmac.new(self._secret, raw, hashlib.sha256).digest()

    def issue(self) -> str:
        raw = secrets.token_bytes(KEY_BYTES)
        return f"{_encode(raw)}.{_encode(self._sign(raw))}"

    def verify(self, key: object) -> str | None:
        """The session id a key names (its random part), or None unless this server signed it."""
        if not isinstance(key, str) or len(key) > 100 or key.count(".") != 1:
            return None
        body, signature = key.split(".")
        try:
            raw, given = _decode(body), _decode(signature)
        except ValueError:  # not base64 (binascii.Error is a ValueError)
            return None
        if len(raw) != KEY_BYTES or not hmac.compare_digest(given, self._sign(raw)):
            return None
        return body
