"""The gate every /v1 request passes before any route sees it: key, listener, body size, concurrency.

Why an ASGI middleware and not a FastAPI dependency: a dependency runs after FastAPI has read and parsed
the body, so an unauthenticated client could make the server read (and hold) 100 MB. Here the order is:
1. the listener: the adapter routes (load/unload) answer only on the loopback admin listener, with the
   per-pod token; on the public port they do not exist (404), and the admin listener serves nothing else;
2. the key, from the headers alone (401 before a byte of the body is read): the admin key or a tenant key of
   the server's key map (`serving.auth`); the caller's `Access` goes into the request's state
   (`scope["state"]["access"]`), and the routes answer a model it does not reach as one that does not exist;
3. the concurrency limit (429 beyond `maxRequests` requests in progress, body reading included, so 200 slow
   clients cannot pile up);
4. the body: a Content-Length over `maxBodyBytes` is refused at once (413); a chunked body is read only up to
   the limit, within `BODY_SECONDS`, then handed to the app from memory.
Probes and metrics (/healthz, /readyz, /metrics) pass untouched: the kubelet carries no key.
The gateway in front of vLLM (`serving.gateway`) runs this same guard.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from finetune_trainer.serving.auth import NOTHING, Access, KeyMap, bearer_of
from finetune_trainer.serving.server.protocol import APIError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ADMIN_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
LOOPBACK = frozenset({"127.0.0.1", "::1"})
BODY_SECONDS = 30.0
"""A client that has not sent its whole body by then is cut off (408): a slot is not held forever."""


DISCONNECTED = b"\0disconnected"
"""`_read_body`'s answer for a client gone before its body was complete (compared by identity)."""


def missing_key() -> APIError:
    message = "You didn't provide an API key: send 'Authorization: Bearer <key>'"
    return APIError(401, message, "invalid_request_error", None, "invalid_api_key")


def wrong_key() -> APIError:
    return APIError(401, "Incorrect API key provided", "invalid_request_error", None, "invalid_api_key")


def bearer_error(headers: dict[str, str], expected: str | None) -> APIError | None:
    """The 401 for a missing or wrong `Authorization: Bearer` header; None when it matches (or none is set)."""
    if expected is None:
        return None
    token = bearer_of(headers.get("authorization", ""))
    if token is None:
        return missing_key()
    if not hmac.compare_digest(token.encode(), expected.encode()):
        return wrong_key()
    return None


def authenticate(headers: dict[str, str], keys: KeyMap) -> Access | APIError:
    """The caller's access by the key map, or the 401 to answer."""
    token = bearer_of(headers.get("authorization", ""))
    access = keys.authenticate(token)
    if access is not None:
        return access
    return missing_key() if token is None else wrong_key()


def access_of(scope: Scope) -> Access:
    """What the guard let this request reach; nothing where no guard ran (fail closed)."""
    found = (scope.get("state") or {}).get("access")
    return found if isinstance(found, Access) else NOTHING


async def send_error(send: Send, error: APIError, close: bool = False) -> None:
    body = json.dumps(error.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """Wraps the app; see the module docstring for what it refuses and in which order."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        keys: Callable[[], KeyMap],
        max_body_bytes: int,
        max_requests: int,
        admin_port: int | None,
        admin_token_file: Path,
    ) -> None:
        self.app, self.keys = app, keys
        self.max_body_bytes, self.max_requests = max_body_bytes, max_requests
        self.admin_port, self.admin_token_file = admin_port, admin_token_file
        self.in_flight = 0

    def _on_admin_listener(self, scope: Scope) -> bool:
        server = scope.get("server") or ("", None)
        return self.admin_port is not None and server[1] == self.admin_port and server[0] in LOOPBACK

    def _admin_token(self) -> str | None:
        try:
            token = self.admin_token_file.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        return token or None

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> APIError | None:
        path: str = scope.get("path", "")
        if self._on_admin_listener(scope):
            if path not in ADMIN_PATHS:
                return APIError(404, "the admin listener serves the adapter routes only", "invalid_request_error")
            token = self._admin_token()
            if token is None:
                return APIError(503, f"no admin token in {self.admin_token_file} yet", "server_error")
            return bearer_error(headers, token)
        if path in ADMIN_PATHS:
            return APIError(404, "Not Found", "invalid_request_error")
        access = authenticate(headers, self.keys())
        if isinstance(access, APIError):
            return access
        scope.setdefault("state", {})["access"] = access
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        guarded = scope["type"] == "http" and (
            scope.get("path", "").startswith("/v1") or self._on_admin_listener(scope)
        )
        if not guarded:
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await send_error(send, refusal, close=True)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            await send_error(send, self._too_large(), close=True)
            return
        if self.in_flight >= self.max_requests:
            message = f"the server has {self.max_requests} requests in progress (its maxRequests): retry shortly"
            await send_error(send, APIError(429, message, "server_error", None, "server_overloaded"), close=True)
            return
        self.in_flight += 1
        try:
            try:
                body = await asyncio.wait_for(self._read_body(receive), BODY_SECONDS)
            except TimeoutError:
                error = APIError(408, f"the request body did not arrive within {BODY_SECONDS:.0f} s")
                await send_error(send, error, close=True)
                return
            if body is DISCONNECTED:  # the client left before its body was complete: nothing to answer
                return
            if body is None:
                await send_error(send, self._too_large(), close=True)
                return
            await self.app(scope, self._replay(body, receive), send)
        finally:
            self.in_flight -= 1

    def _too_large(self) -> APIError:
        message = f"the request body is larger than this server's limit of {self.max_body_bytes} bytes (maxBodyBytes)"
        return APIError(413, message, "invalid_request_error", None, "request_too_large")

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (nothing more is read)."""
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return DISCONNECTED
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            parts.append(chunk)
            if not message.get("more_body", False):
                return b"".join(parts)

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """The body once, from memory; afterwards the real channel (a streaming reply watches for disconnects)."""
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
