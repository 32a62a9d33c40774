"""Gradio's per-page queues bound to the client that opened them.

Gradio keys a page's queue (the event stream `/queue/data`, joins, cancels, heartbeats, per-page
state) on a `session_hash` the client picks and sends in URLs. Whoever learns a page's hash could
read the answers streamed to it, or take its messages so that it waits for ever. This ASGI
middleware gives every client a random HttpOnly cookie and, on each Gradio API request, replaces
the session hash with an HMAC of cookie and hash: the same hash from another client names another
queue. Browsers and `gradio_client` keep the cookie; a client that sends none still works, in a
namespace shared only with other clients that send none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

COOKIE = "scratchgpt-client"
API = "/gradio_api/"
JSON_ROUTES = ("queue/join", "cancel", "reset", "run/", "api/", "component_server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BoundSessions:
    """ASGI middleware: session hashes bound to the client's cookie (see the module docstring)."""

    def __init__(self, app: Callable[..., Awaitable[None]], secret: bytes | None = None) -> None:
        self.app = app
        self.secret = secret or secrets.token_bytes(32)

    def bind(self, client: str, session_hash: str) -> str:
        return hmac.new(
            self.secret, f"{client}\0{session_hash}".encode(), hashlib.sha256
        ).hexdigest()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        cookie = SimpleCookie(headers.get(b"cookie", b"").decode("latin-1"))
        client = cookie[COOKIE].value if COOKIE in cookie else ""
        if scope["path"].startswith(API):
            scope = self._rebind_url(dict(scope), client)
            route = scope["path"][len(API) :]
            if scope["method"] == "POST" and route.startswith(JSON_ROUTES):
                scope, receive = await self._rebind_body(scope, receive, client)
        if not client:
            send = self._with_cookie(send, secrets.token_urlsafe(24))
        await self.app(scope, receive, send)

    def _rebind_url(self, scope: Scope, client: str) -> Scope:
        query = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        if any(name == "session_hash" for name, _ in query):
            query = [(n, self.bind(client, v) if n == "session_hash" else v) for n, v in query]
            scope["query_string"] = urlencode(query).encode("latin-1")
        parts = scope["path"].split("/")  # "", "gradio_api", route, ...
        # /heartbeat/{hash}, /stream/{hash}/{run}/{component}/... (not /stream/{event_id}[/close])
        if len(parts) > 3 and (
            parts[2] == "heartbeat" or (parts[2] == "stream" and len(parts) >= 6)
        ):
            parts[3] = self.bind(client, parts[3])
            scope["path"] = "/".join(parts)
            scope["raw_path"] = scope["path"].encode("latin-1")
        return scope

    async def _rebind_body(
        self, scope: Scope, receive: Receive, client: str
    ) -> tuple[Scope, Receive]:
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return scope, _replay(message, receive)
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("session_hash"), str):
            data["session_hash"] = self.bind(client, data["session_hash"])
            body = json.dumps(data).encode()
            scope["headers"] = [
                (k, str(len(body)).encode() if k == b"content-length" else v)
                for k, v in scope["headers"]
            ]
        return scope, _replay({"type": "http.request", "body": body}, receive)

    @staticmethod
    def _with_cookie(send: Send, value: str) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = f"{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax"
                message["headers"] = [*message.get("headers", []), (b"set-cookie", header.encode())]
            await send(message)

        return sending


def _replay(first: Message, receive: Receive) -> Receive:
    """A `receive` that hands over `first` (the re-written body), then what the client sends."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return first

    return replay
