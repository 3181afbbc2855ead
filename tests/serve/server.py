"""Run an app with real uvicorn on 127.0.0.1 (a free port) in a background thread, for one `with` block."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any


def free_socket() -> socket.socket:
    """A TCP socket bound to a free port of 127.0.0.1."""
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP (a proto of 0
    # would leave Nagle on, and every response would wait ~40 ms for a delayed ACK)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer:
    """`with RunningServer(app) as server:` serves `app` at `server.url` until the block ends, with uvicorn
    configured as the pod's CLI configures it; `admin` (a bound socket): a shared server's admin listener too,
    at `server.admin_url`."""

    def __init__(self, app: Any, admin: socket.socket | None = None) -> None:
        import uvicorn
        from finetune_trainer.serving.server.cli import server_config

        self.app = app
        self.socket = free_socket()
        self.port = self.socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = admin
        self.admin_url = f"http://127.0.0.1:{admin.getsockname()[1]}" if admin is not None else ""
        config = server_config(app, "warning")
        config.timeout_graceful_shutdown = 5
        self.server = uvicorn.Server(config)
        sockets = [self.socket] if admin is None else [self.socket, admin]
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": sockets}, daemon=True)

    def __enter__(self) -> RunningServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()
        if self.admin is not None:
            self.admin.close()


def wait_ready(url: str, timeout: float = 60) -> Any:
    """Poll /readyz until 200 or the timeout; returns the last response."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(url + "/readyz", timeout=10)
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.05)
