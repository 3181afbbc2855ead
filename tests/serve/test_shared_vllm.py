"""The adapters sidecar against vLLM's real CPU build (the vLLM venv of hack/venv-vllm.sh), as a ModelServer's vLLM
pod runs it: runtime LoRA loading on (VLLM_ALLOW_RUNTIME_LORA_UPDATING), the operator's CPU flags, an API key.
One server of SmolLM2-135M-Instruct; the sidecar's pass loads three adapters from a desired list, each answers
under its own name through the official OpenAI client, one is replaced in place (load_inplace) while another
is streamed without a failed request, one is removed, and a foreign adapter loaded behind the sidecar's back
is unloaded by the next pass. Then the gateway a vLLM pod runs in front of it (finetune_trainer.serving.gateway):
tenant keys from the sidecar's copy of adapters.json, load/unload never forwarded, the body, concurrency and
max_tokens limits, and a stream relayed as vLLM produces it. ~6.5 GB of memory: one vLLM server at a time on a
shared machine."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.serve import tiny_models
from tests.serve.vllm_server import KEY
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.timeout(1200)]


class _ConfigMaps:
    """The desired and report ConfigMaps in memory (the unit test of the module that talks to the API)."""

    def __init__(self, s3_bucket: Any) -> None:
        self.maps: dict[str, dict[str, str]] = {}
        self.s3_bucket = s3_bucket

    def want(self, adapters: list[tuple[str, int, Path]], keys: dict[str, str] | None = None) -> None:
        """The operator's entries for these (name, run, adapter folder): each published to S3 as the trainer
        does, under its FineTuneJob's output (`team-a/NAME/run-N/model/`, or `NAMESPACE/NAME` from another);
        `keys`: an adapter's tenant key (its entry's `keySha256`)."""
        from finetune_trainer.serving.auth import key_sha256

        entries = []
        for name, run, folder in adapters:
            job = name if "/" in name else f"team-a/{name}"
            uri = tiny_models.publish(folder, self.s3_bucket.uri(f"{job}/run-{run}/model/"))
            entry: dict[str, Any] = {"name": name, "finetuneJob": job, "run": run, "uri": uri}
            if keys and name in keys:
                entry["keySha256"] = key_sha256(keys[name])
            entries.append(entry)
        self.maps["desired"] = {"adapters.json": json.dumps({"adapters": entries})}

    def data(self, name: str) -> dict[str, str]:
        return dict(self.maps.get(name, {}))

    def put_key(self, name: str, key: str, value: str) -> None:
        self.maps.setdefault(name, {})[key] = value


@pytest.mark.s3
def test_the_sidecar_drives_vllm(vllm: tuple[str, Path, list[Path]], tmp_path: Path, s3_bucket: Any) -> None:
    import httpx
    from finetune_trainer.serving.adapters.cli import EngineClient, sync_once
    from openai import OpenAI

    url, _, (a0, a1, a2, a3) = vllm
    engine = EngineClient(url, KEY)
    maps = _ConfigMaps(s3_bucket)
    maps.want([("alpha", 1, a0), ("beta", 1, a1), ("team-b/gamma", 1, a2)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    assert done and [a["name"] for a in state["adapters"]] == ["alpha", "beta", "team-b/gamma"], state
    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    listed = {m.id: m for m in client.models.list().data}
    card = listed["alpha"].model_dump()  # vLLM's own card fields (not in the OpenAI client's model)
    assert card["parent"] == "shared" and "/run-1" in str(card["root"])

    def ask(model: str, tokens: int = 12) -> str:
        reply = client.completions.create(
            model=model, prompt="How do I reset my password?", max_tokens=tokens, temperature=0
        )
        assert reply.model == model
        return reply.choices[0].text

    answers = {m: ask(m) for m in ("shared", "alpha", "beta", "team-b/gamma")}
    assert len(set(answers.values())) == 4, answers  # four different models answering

    # alpha's run 2 (another adapter) replaces run 1 in place while beta is streamed: no request fails. The
    # windows before and after the swap are counted in answered rounds, not seconds, so "no failure" cannot
    # hold because nothing was asked.
    failures: list[str] = []
    rounds: list[float] = []  # when each round (beta, then alpha) was answered
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                ask("beta", 24)
                ask("alpha", 4)
                rounds.append(time.monotonic())
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")

    def answered_since(moment: float, count: int) -> bool:
        assert not failures, failures[:3]
        return sum(1 for t in rounds if t > moment) >= count

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    wait_for("a round answered before the swap", lambda: answered_since(0.0, 1), timeout=600)
    maps.want([("alpha", 2, a3), ("beta", 1, a1), ("team-b/gamma", 1, a2)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    swapped = time.monotonic()
    # the round in flight across the swap answered (the new alpha's own answer is checked below)
    wait_for("a round answered after the swap", lambda: answered_since(swapped, 1), timeout=600)
    stop.set()
    asker.join(300)
    assert done and not failures, failures[:3]
    assert {a["name"]: a["run"] for a in state["adapters"]}["alpha"] == 2
    assert ask("alpha") != answers["alpha"]  # the new weights answer

    # removed from the list: unloaded; an adapter loaded behind the sidecar's back: unloaded by the next pass
    foreign = {"lora_name": "intruder", "lora_path": str(a0)}
    httpx.post(
        url + "/v1/load_lora_adapter", json=foreign, headers={"Authorization": f"Bearer {KEY}"}
    ).raise_for_status()
    unauthenticated = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "beta"})
    assert unauthenticated.status_code == 401  # the key guards vLLM's runtime LoRA routes
    maps.want([("alpha", 2, a3), ("beta", 1, a1)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    assert done and [a["name"] for a in state["adapters"]] == ["alpha", "beta"]
    assert set(m.id for m in client.models.list().data) == {"shared", "alpha", "beta"}


TEAM_A, TEAM_B = "sk-vllm-tenant-a", "sk-vllm-tenant-b"


@pytest.mark.s3
def test_the_gateway_guards_vllm(vllm: tuple[str, Path, list[Path]], tmp_path: Path, s3_bucket: Any) -> None:
    import socket

    import httpx
    import openai
    from finetune_trainer.serving.adapters.cli import EngineClient, sync_once
    from finetune_trainer.serving.gateway.app import GatewaySettings, create_app
    from finetune_trainer.serving.gateway.limits import TokenLimits

    from tests.serve.server import RunningServer
    from tests.serve.test_limits import _head, _status

    url, _, (a0, a1, _a2, _a3) = vllm
    maps = _ConfigMaps(s3_bucket)
    maps.want([("alpha", 1, a0), ("team-b/gamma", 1, a1)], keys={"alpha": TEAM_A, "team-b/gamma": TEAM_B})
    dest = tmp_path / "adapters"
    state, done = sync_once(maps, EngineClient(url, KEY), "desired", dest, "team-a")  # type: ignore[arg-type]
    assert done, state
    max_requests = 4
    settings = GatewaySettings(
        upstream=url,
        api_key=KEY,
        adapters_file=dest / ".adapters.json",  # the sidecar's copy of the desired list
        reserved=frozenset({"shared"}),
        max_requests=max_requests,
        limits=TokenLimits(default_max_tokens=8, max_tokens_limit=64),
    )
    with RunningServer(create_app(settings)) as gateway:
        assert httpx.get(gateway.url + "/readyz", timeout=10).status_code == 200

        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=300)

        # the key map: each tenant its own adapter, the server's key everything, no key nothing
        a, admin = client(TEAM_A), client(KEY)
        reply = a.completions.create(model="alpha", prompt="How do I reset my password?", max_tokens=6)
        assert reply.model == "alpha" and reply.choices[0].text
        assert [m.id for m in a.models.list().data] == ["alpha"]
        assert [m.id for m in client(TEAM_B).models.list().data] == ["team-b/gamma"]
        assert {m.id for m in admin.models.list().data} >= {"shared", "alpha", "team-b/gamma"}
        for model in ("team-b/gamma", "shared", "nobody"):
            with pytest.raises(openai.NotFoundError) as caught:
                a.completions.create(model=model, prompt="hi", max_tokens=2)
            assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert admin.completions.create(model="team-b/gamma", prompt="hi", max_tokens=2).model == "team-b/gamma"
        with pytest.raises(openai.AuthenticationError):
            client("sk-wrong").models.list()
        assert httpx.get(gateway.url + "/v1/models", timeout=30).status_code == 401

        # vLLM's runtime-LoRA routes are never forwarded, whatever the key; vLLM's own list is unchanged
        auth = {"Authorization": f"Bearer {KEY}"}
        intruder = {"lora_name": "intruder", "lora_path": str(a0)}
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            assert httpx.post(gateway.url + path, json=intruder, headers=auth, timeout=30).status_code == 404
        assert "intruder" not in {m.id for m in admin.models.list().data}

        # max_tokens: a chat without one gets the default, one over the ceiling is refused naming the field
        chat = a.chat.completions.create(model="alpha", messages=[{"role": "user", "content": "Tell me a story."}])
        assert chat.usage is not None and chat.usage.completion_tokens <= 8
        with pytest.raises(openai.BadRequestError) as refused:
            a.chat.completions.create(model="alpha", max_tokens=65, messages=[{"role": "user", "content": "hi"}])
        assert refused.value.body["param"] == "max_tokens"  # type: ignore[index]

        # a stream is relayed as vLLM produces it: chunks arrive spread over the generation, not at once
        arrivals = []
        started = time.monotonic()
        stream = a.completions.create(model="alpha", prompt="Once upon a time", max_tokens=48, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].text:
                arrivals.append(time.monotonic() - started)
        assert len(arrivals) >= 10, arrivals
        assert arrivals[-1] - arrivals[0] > 0.25 * arrivals[-1], arrivals  # not one burst at the end

        # the body limit (413 from the length alone) and the concurrency limit (429), the probe answering
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            sock.sendall(_head("/v1/completions", 100 * 1024 * 1024, key=TEAM_A))
            assert _status(sock) == 413
        stalled = []
        try:
            for _ in range(max_requests + 2):
                sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=0.5)
                sock.sendall(_head("/v1/completions", 1000, key=TEAM_A) + b'{"model": ')
                stalled.append(sock)
            assert httpx.get(gateway.url + "/healthz", timeout=1).status_code == 200
            statuses = []
            for sock in stalled:
                sock.settimeout(0.5)
                try:
                    statuses.append(_status(sock))
                except TimeoutError:
                    statuses.append(0)  # still waiting for its body: holds a slot
            assert sorted(statuses) == [0] * max_requests + [429, 429], statuses
        finally:
            for sock in stalled:
                sock.close()
