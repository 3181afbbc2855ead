"""The model server under hostile load (issue 24, attack 6): each limit is a test against real uvicorn on
127.0.0.1, with the liveness probe (/healthz, the kubelet's default 1 s timeout) checked while it holds.

- a 100 MB body is refused with 413 from its Content-Length, before any of it is read; a chunked body as soon
  as it passes the limit;
- a request without the key is refused with 401 before its body is read;
- a prompt of a million characters is refused with 400 naming the prompt limit, at once;
- 200 concurrent slow clients: those beyond `maxRequests` get 429 at once, the probe keeps answering, and the
  slots come back when the clients go;
- chat without `max_tokens` generates at most `defaultMaxTokens`;
- X-Forwarded-For is ignored (uvicorn as the pod runs it: `proxy_headers` off).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve.conftest import API_KEY, MODEL_NAME, settings_for
from tests.serve.server import RunningServer

PROBE_TIMEOUT = 1.0  # the kubelet's default timeoutSeconds


@pytest.fixture(scope="module")
def guarded(lm_engine: Any, tiny_lm_dir: Path, tiny_adapter_dir: Path) -> Iterator[RunningServer]:
    """A server with an API key and serve.json's default limits, plus `defaultMaxTokens: 5`."""
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig

    settings = settings_for(str(tiny_adapter_dir), str(tiny_lm_dir), api_key=API_KEY)
    raw = settings.config.model_dump(by_alias=True)
    config = ServeConfig.model_validate({**raw, "defaultMaxTokens": 5})
    settings = type(settings)(config=config, api_key=API_KEY, work_dir=settings.work_dir, device="cpu")
    with RunningServer(create_app(settings, engine=lm_engine)) as server:
        yield server


def _probe_ok(server: RunningServer) -> bool:
    started = time.monotonic()
    try:
        answer = httpx.get(server.url + "/healthz", timeout=PROBE_TIMEOUT)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and time.monotonic() - started < PROBE_TIMEOUT


def _head(path: str, length: int | None, key: str | None = API_KEY, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket) -> int:
    """The status code of the response on `sock` (socket.timeout when none comes in time)."""
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed without a response: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


def _connect(server: RunningServer, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=timeout)


def test_a_100_mb_body_is_refused_from_its_length_before_it_is_read(guarded: RunningServer) -> None:
    with _connect(guarded) as sock:
        sock.sendall(_head("/v1/completions", 100_000_000))  # the headers only: nothing of the body yet
        started = time.monotonic()
        assert _status(sock) == 413
        assert time.monotonic() - started < 5
    assert _probe_ok(guarded)


def test_a_chunked_body_is_refused_once_past_the_limit(guarded: RunningServer) -> None:
    with _connect(guarded) as sock:
        sock.sendall(_head("/v1/completions", None, chunked=True))
        piece = b"x" * 65536
        for _ in range(17):  # 17 x 64 KiB: just past the default 1 MiB, and no final chunk
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        assert _status(sock) == 413
    assert _probe_ok(guarded)


def test_no_key_is_refused_before_the_body_is_read(guarded: RunningServer) -> None:
    for key in (None, "wrong-key"):
        with _connect(guarded) as sock:
            sock.sendall(_head("/v1/chat/completions", 100_000_000, key=key))
            assert _status(sock) == 401


def test_a_million_character_prompt_is_refused_at_once_naming_the_limit(guarded: RunningServer) -> None:
    prompt = "the quick brown fox " * 50_000  # 1,000,000 characters, inside the 1 MiB body limit
    assert len(prompt) == 1_000_000
    auth = {"Authorization": f"Bearer {API_KEY}"}
    answers: dict[str, httpx.Response] = {}

    def send(path: str, body: dict[str, Any]) -> None:
        answers[path] = httpx.post(guarded.url + path, json=body, headers=auth, timeout=60)

    threads = [
        threading.Thread(target=send, args=("/v1/completions", {"model": MODEL_NAME, "prompt": prompt})),
        threading.Thread(
            target=send,
            args=("/v1/chat/completions", {"model": MODEL_NAME, "messages": [{"role": "user", "content": prompt}]}),
        ),
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    probes = []
    while any(thread.is_alive() for thread in threads):
        probes.append(_probe_ok(guarded))
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert time.monotonic() - started < 5
    assert all(probes)
    for path, answer in answers.items():
        assert answer.status_code == 400, (path, answer.text)
        error = answer.json()["error"]
        assert error["code"] == "context_length_exceeded"
        assert "255 tokens" in error["message"] and "prompt limit" in error["message"], error["message"]


def test_chat_without_max_tokens_generates_at_most_the_default(guarded: RunningServer) -> None:
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    answer = httpx.post(guarded.url + "/v1/chat/completions", json=body, headers=auth, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] <= 5


def test_200_slow_clients_get_429_beyond_the_limit_and_the_probe_keeps_answering(guarded: RunningServer) -> None:
    limit = 64  # serve.json's default maxRequests
    clients: list[socket.socket] = []
    try:
        for _ in range(200):  # each sends its headers and 10 of 1000 body bytes, then stalls
            sock = _connect(guarded, timeout=0.5)
            sock.sendall(_head("/v1/completions", 1000) + b'{"model": ')
            clients.append(sock)
        probes = [_probe_ok(guarded) for _ in range(10)]  # ~1 s: the refusals have arrived by then
        refused, waiting = 0, 0
        for sock in clients:
            sock.settimeout(0.02)
            try:
                status = _status(sock)
            except TimeoutError:
                waiting += 1
            else:
                assert status == 429
                refused += 1
        assert (refused, waiting) == (200 - limit, limit)
        assert all(probes)
    finally:
        for sock in clients:
            sock.close()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
    deadline = time.monotonic() + 10
    while True:  # the slots come back once the slow clients have gone
        answer = httpx.post(guarded.url + "/v1/completions", json=body, headers=auth, timeout=30)
        if answer.status_code != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_x_forwarded_for_is_ignored() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def whoami(request: Request) -> JSONResponse:
        assert request.client is not None
        return JSONResponse({"client": request.client.host, "scheme": request.url.scheme})

    app = Starlette(routes=[Route("/whoami", whoami)])
    with RunningServer(app) as server:
        forged = {"X-Forwarded-For": "10.9.8.7", "X-Forwarded-Proto": "https"}
        seen = httpx.get(server.url + "/whoami", headers=forged, timeout=10).json()
    assert seen == {"client": "127.0.0.1", "scheme": "http"}
