"""The gateway in front of an OpenAI server (finetune_trainer.serving.gateway), through real uvicorn on 127.0.0.1.

The upstream here is our own engine as a shared server (a tiny LM with two adapters) that knows the admin key
only: a tenant's request that succeeds proves the gateway put the server's key in place of the tenant's. vLLM as
the upstream is tests/serve/test_gateway_vllm.py (the same guard; slow, so the limits are asserted here).

Asserted: tenant keys reach their own adapter only (404 `model_not_found` otherwise, /v1/models filtered), the
admin key reaches all, no key 401; vLLM's load/unload routes and any other path are 404 whatever the key; a 100 MB
body is refused from its length (413) and a chunked one once past the limit; a body that does not arrive in time
is 408; requests beyond `maxRequests` are 429 while the liveness probe keeps answering within 1 s; `max_tokens`
gets the default and is refused over the ceiling; a stream arrives as server-sent events, chunk by chunk.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serve import tiny_models
from tests.serve.server import RunningServer
from tests.serve.test_limits import _head, _status

ADMIN = "sk-gateway-admin-0123"
TEAM_A, TEAM_B = "sk-gw-tenant-a", "sk-gw-tenant-b"
BASE = "shared"
MAX_REQUESTS = 8
PROBE_TIMEOUT = 1.0


def _desired(entries: list[tuple[str, str]]) -> str:
    from finetune_trainer.serving.auth import key_sha256

    adapters = [
        {"name": n, "finetuneJob": f"t/{n}", "run": 1, "uri": "s3://b/run-1/model/", "keySha256": key_sha256(k)}
        for n, k in entries
    ]
    return json.dumps({"server": f"t/{BASE}", "adapters": adapters})


@pytest.fixture(scope="module")
def gateway(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    from finetune_trainer.serving.gateway.app import GatewaySettings, create_app
    from finetune_trainer.serving.gateway.limits import TokenLimits
    from finetune_trainer.serving.server.app import create_app as create_server
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    root = tmp_path_factory.mktemp("gateway")
    config = ServeConfig.model_validate(
        {"servedModelName": BASE, "modelUri": str(tiny_lm_dir), "baseModelUri": str(tiny_lm_dir), "maxAdapters": 2}
    )
    upstream_settings = ServeSettings(
        config=config,
        api_key=ADMIN,  # the upstream knows the admin key alone
        work_dir=tiny_lm_dir,
        device="cpu",
        admin_token_file=root / ".admin-token",
        adapters_file=root / "absent.json",
    )
    desired = root / ".adapters.json"
    desired.write_text(_desired([("alpha", TEAM_A), ("beta", TEAM_B)]))
    engine = Engine(from_folder(tiny_lm_dir), max_batch_size=4)
    with RunningServer(create_server(upstream_settings, engine=engine)) as upstream:
        for seed, name in ((1, "alpha"), (2, "beta")):
            engine.load_adapter(name, str(tiny_models.build_lora_adapter(tiny_lm_dir, root / name, seed=seed)), 1)
        settings = GatewaySettings(
            upstream=upstream.url,
            api_key=ADMIN,
            adapters_file=desired,
            reserved=frozenset({BASE}),
            max_requests=MAX_REQUESTS,
            limits=TokenLimits(default_max_tokens=5, max_tokens_limit=64),
        )
        with RunningServer(create_app(settings)) as running:
            yield running
    engine.stop()


def _client(server: RunningServer, key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _probe_ok(server: RunningServer) -> bool:
    started = time.monotonic()
    try:
        answer = httpx.get(server.url + "/healthz", timeout=PROBE_TIMEOUT)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and time.monotonic() - started < PROBE_TIMEOUT


def test_the_probes_answer(gateway: RunningServer) -> None:
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    ready = httpx.get(gateway.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready", ready.text


def test_tenant_keys_reach_their_own_adapters_only(gateway: RunningServer) -> None:
    import openai

    a = _client(gateway, TEAM_A)
    assert a.completions.create(model="alpha", prompt="the quick", max_tokens=3, temperature=0).model == "alpha"
    assert [m.id for m in a.models.list().data] == ["alpha"]
    assert [m.id for m in _client(gateway, TEAM_B).models.list().data] == ["beta"]
    for model in ("beta", BASE, "nobody"):
        with pytest.raises(openai.NotFoundError) as caught:
            a.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    admin = _client(gateway, ADMIN)
    assert [m.id for m in admin.models.list().data] == [BASE, "alpha", "beta"]
    for model in (BASE, "alpha", "beta"):
        assert admin.completions.create(model=model, prompt="hi", max_tokens=2).model == model
    for key in ("sk-wrong", ""):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        refused = httpx.post(gateway.url + "/v1/completions", json={"model": "alpha", "prompt": "x"}, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_load_unload_and_other_routes_are_never_forwarded(gateway: RunningServer) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    body = {"lora_name": "intruder", "lora_path": "/tmp"}
    for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
        for headers in (auth, {**auth, "X-Forwarded-For": "127.0.0.1"}, {}):
            assert httpx.post(gateway.url + path, json=body, headers=headers).status_code == 404
    for path in ("/v1/embeddings", "/v1/classify", "/metrics", "/tokenize", "/v1/admin"):
        assert httpx.post(gateway.url + path, json={"model": "alpha"}, headers=auth).status_code == 404
    models = {m.id for m in _client(gateway, ADMIN).models.list().data}
    assert "intruder" not in models


def test_max_tokens_gets_a_default_and_a_ceiling(gateway: RunningServer) -> None:
    auth = {"Authorization": f"Bearer {TEAM_A}"}
    chat = {"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    answer = httpx.post(gateway.url + "/v1/chat/completions", json=chat, headers=auth, timeout=60)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] <= 5, answer.text
    for field in ("max_tokens", "max_completion_tokens"):
        refused = httpx.post(gateway.url + "/v1/chat/completions", json={**chat, field: 65}, headers=auth)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == field, refused.text
    refused = httpx.post(gateway.url + "/v1/completions", json={"model": "alpha", "prompt": "x", "max_tokens": 10**6})
    assert refused.status_code == 401  # the key first
    bad = httpx.post(gateway.url + "/v1/completions", content=b"{not json", headers=auth)
    assert bad.status_code == 400


def test_a_stream_arrives_chunk_by_chunk(gateway: RunningServer) -> None:
    client = _client(gateway, TEAM_A)
    stream = client.chat.completions.create(
        model="alpha", max_tokens=12, temperature=0, stream=True, messages=[{"role": "user", "content": "hi"}]
    )
    chunks = [c for c in stream]
    assert len(chunks) > 3 and chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_body_size_limits(gateway: RunningServer) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_head("/v1/completions", 100 * 1024 * 1024, key=TEAM_A))  # 100 MB announced, none sent
        assert _status(sock) == 413
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_head("/v1/completions", None, key=TEAM_A, chunked=True))
        chunk = b"x" * 65536
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            for _ in range(100):  # 6.4 MB in all: refused once past 1 MiB, the connection closed
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        assert _status(sock) == 413
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_head("/v1/completions", 1000, key=None))  # no key: 401 before a byte of body is read
        assert _status(sock) == 401
    assert _probe_ok(gateway)


def test_a_body_that_does_not_arrive_in_time_is_408(gateway: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.serving.server import guard

    monkeypatch.setattr(guard, "BODY_SECONDS", 1.0)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(_head("/v1/completions", 1000, key=TEAM_A) + b'{"model": ')
        started = time.monotonic()
        assert _status(sock) == 408 and time.monotonic() - started < 5


def test_requests_beyond_the_limit_get_429_and_the_probe_keeps_answering(gateway: RunningServer) -> None:
    clients: list[socket.socket] = []
    try:
        for _ in range(3 * MAX_REQUESTS):  # each sends its headers and a few body bytes, then stalls
            sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=0.5)
            sock.sendall(_head("/v1/completions", 1000, key=TEAM_A) + b'{"model": ')
            clients.append(sock)
        probes = [_probe_ok(gateway) for _ in range(5)]
        refused, waiting = 0, 0
        for sock in clients:
            sock.settimeout(0.05)
            try:
                assert _status(sock) == 429
                refused += 1
            except TimeoutError:
                waiting += 1
        assert (refused, waiting) == (2 * MAX_REQUESTS, MAX_REQUESTS) and all(probes)
        assert httpx.get(gateway.url + "/readyz", timeout=PROBE_TIMEOUT).status_code == 200  # not blocked either
    finally:
        for sock in clients:
            sock.close()
