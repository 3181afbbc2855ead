"""An HTTP proxy in front of the real olah server that plays a gated repo (or a failing hub) for token tests.

Why: olah serves local mirrors ungated and reads no token, so nothing real here answers 401/403. The proxy
forwards every request to olah unchanged and records each request's Authorization header (the proof that the
token reaches the hub); with `token` set it answers what the Hub answers for a gated repo: 401 with
`X-Error-Code: GatedRepo` without a token, 403 with it for a different token (both as huggingface_hub reads
them); with `status` set it answers that status to everything (a hub that is down: 503).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_HOP = {"connection", "transfer-encoding", "keep-alive", "host"}


class HubGate:
    """Listens on `host` (127.0.0.1; the e2e tier: the node bridge's gateway); `url` is the endpoint to give as
    HF_ENDPOINT. Stop with `close()`."""

    def __init__(
        self, upstream: str, token: str | None = None, status: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.token = token
        self.status = status
        self.authorizations: list[str | None] = []
        gate = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                gate.handle(self, "GET")

            def do_HEAD(self) -> None:
                gate.handle(self, "HEAD")

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> HubGate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(
        self, handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes, length: str = ""
    ) -> None:
        """`length`: a HEAD's Content-Length, the upstream's (its body is empty; huggingface_hub reads the size)."""
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", length or str(len(body)))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)

    def handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        authorization = handler.headers.get("Authorization")
        self.authorizations.append(authorization)
        if self.status is not None:
            self._answer(handler, self.status, {}, b"test gate: the hub is down")
            return
        if self.token is not None and authorization != f"Bearer {self.token}":
            gated = {"X-Error-Code": "GatedRepo", "X-Error-Message": "Access to this repo is restricted."}
            self._answer(handler, 401 if authorization is None else 403, gated, b'{"error":"gated"}')
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP}
        request = urllib.request.Request(self.upstream + handler.path, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, reply, body = response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            status, reply, body = error.code, dict(error.headers), error.read()
        length = next((v for k, v in reply.items() if k.lower() == "content-length"), "") if method == "HEAD" else ""
        kept = {k: v for k, v in reply.items() if k.lower() not in _HOP | {"content-length"}}
        for key in ("Location", "location"):  # a redirect to the upstream goes through the gate too
            if key in kept:
                kept[key] = kept[key].replace(self.upstream, self.url)
        self._answer(handler, status, kept, body, length)
