"""A TCP proxy in front of the real S3 server that slows down, or refuses, PUTs under one key fragment.

Why: the asynchronous checkpoint upload is only proven by a checkpoint upload that really takes time (or
really fails) while the real trainer trains against the real S3 server; the local server answers in
milliseconds. The proxy forwards bytes unchanged (SigV4 signatures stay valid: the Host header is the
proxy's, as the client signed it) and only looks at the first line of each request: a `PUT` whose path
contains `fragment` is held back `delay` seconds, or until the event `hold` is set, or, with `deny`,
answered with the 403 `AccessDenied` a server with a deny policy on that prefix would send (boto3 sends
`Expect: 100-continue` with file bodies, so the refused request's body never follows). `on_match` runs
at the first such request, before it is held: a test can act at the exact moment an upload starts.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlparse

DENIED = b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
DENIED_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied (test proxy: writes under this prefix are refused)</Message></Error>"
)


class S3Proxy:
    """Listens on 127.0.0.1; `url` is the endpoint to give the trainer. Stop with `close()`."""

    def __init__(
        self,
        upstream_url: str,
        fragment: str,
        delay: float = 0.0,
        deny: bool = False,
        hold: threading.Event | None = None,
        on_match: Callable[[], None] | None = None,
    ) -> None:
        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.fragment = fragment.encode()
        self.delay = delay
        self.deny = deny
        self.hold = hold
        self.on_match = on_match
        self.matched = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def __enter__(self) -> S3Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _matches(self, chunk: bytes) -> bool:
        first_line = chunk.split(b"\r\n", 1)[0]
        return first_line.startswith(b"PUT ") and self.fragment in first_line

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to server: a request starts a chunk (the client waits for each response first)."""
        try:
            while chunk := client.recv(65536):
                if self._matches(chunk):
                    with self._lock:
                        self.matched += 1
                        first = self.matched == 1
                    if first and self.on_match is not None:
                        self.on_match()
                    if self.hold is not None:
                        self.hold.wait(120)
                    if self.deny:
                        client.sendall(DENIED % (len(DENIED_BODY), DENIED_BODY))
                        _drain(client)  # closing with unread bytes would reset the connection
                        break
                    time.sleep(self.delay)
                upstream.sendall(chunk)
        except OSError:
            pass
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _drain(sock: socket.socket, seconds: float = 1.0) -> None:
    """Read and drop what the client still sends (a body it sent without waiting), until EOF or `seconds`."""
    sock.settimeout(seconds)
    with contextlib.suppress(OSError):
        while sock.recv(65536):
            pass
