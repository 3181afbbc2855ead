"""Shared serving end to end on the local cluster's real node, with each engine: one ModelServer of
SmolLM2-135M-Instruct holding the LoRA adapters of three FineTuneJobs trained in pods on the node (a few steps
each: this checks the serving path, not what training learns; the quickstart test does that). Our engine runs two
replicas; vLLM's CPU build (`make images`, ~6.5 GB a server) one, with an API key.

Asserted: no FineTuneJob gets a Deployment; each adapter answers under its FineTuneJob's name through the
official OpenAI client (and the base under the server's name); one is retrained and its run 2 replaces run 1
while another adapter is queried without a single failed request; one is deleted and leaves the server; a server
pod deleted by hand comes back with every adapter, as the status's per-replica list shows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, install_chart, seed_demo
from tests.support.portforward import port_forward

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(2400)]

BASE = "s3://models/smollm2-135m-instruct/"
NAMES = ("alpha", "beta", "gamma")


def _job(name: str, namespace: str, s3_endpoint: str, learning_rate: float = 2e-3) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": BASE},
            # the demo data's own held-out files: a random split of its training file would hold out near-copies of
            # training questions (the same question with another greeting), which validation refuses
            "dataset": {
                "train": {"uri": "s3://data/support/train.jsonl"},
                "validation": {"uri": "s3://data/support/validation.jsonl"},
                "test": {"uri": "s3://data/support/test.jsonl"},
                "schema": "chat",
                "maxSeqLength": 128,
            },
            "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "targetModules": ["all-linear"]}},
            "hyperparameters": {"maxSteps": 2, "batchSize": 4, "learningRate": learning_rate},
            # CPU requests sized so three trainers, two replicas and the operator fit the node's 2 cores: a
            # request is also the pod's CPU share when the cores are busy, and a server at 100m beside a
            # trainer at 1 got a tenth of a core (one round of questions answered in a whole retraining)
            "resources": {"gpus": 0, "cpu": "400m", "memory": "4Gi"},
            "output": {"uri": f"s3://artifacts/e2e-shared/{namespace}/{name}/"},
            "storage": {"credentialsSecret": "s3-creds", "endpoint": s3_endpoint},
            "serving": {"enabled": True, "server": "shared"},
        },
    }


API_KEY = "sk-shared-e2e"
REPLICAS = {"transformers": 2, "vllm": 1}


def _server(s3_endpoint: str, engine: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModelUri": BASE,
        "engine": engine,
        "replicas": REPLICAS[engine],
        "maxAdapters": 4,
        "maxLoraRank": 16,
        "storage": {"credentialsSecret": "s3-creds", "endpoint": s3_endpoint},
    }
    if engine == "transformers":
        spec["resources"] = {"requests": {"cpu": "300m", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    # the server's admin key (reaching every adapter), from the user's Secret; on vLLM its runtime LoRA routes
    # need it too (the operator's CPU defaults for vLLM: 7Gi)
    spec["apiKeySecret"] = "api"
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelServer", "metadata": {"name": "shared"}, "spec": spec}


def _until(what: str, check: Callable[[], Any], timeout: float, every: float = 2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {found!r}")
        time.sleep(every)


@pytest.mark.parametrize("engine", ["transformers", "vllm"])
def test_three_fine_tunes_share_one_server(
    cluster: Cluster, namespace: str, images: dict[str, str], engine: str, request: pytest.FixtureRequest
) -> None:
    sets: tuple[str, ...] = ()
    if engine == "vllm":
        if (free := _available_gib()) < 9:
            pytest.fail(f"vLLM's server needs ~7 GiB and this machine has {free:.1f} GiB available")
        sets = (f"serving.vllmImage={request.getfixturevalue('vllm_image')}", "serving.vllmDevice=cpu")
    with install_chart(cluster, namespace, images, *sets, "validation.cpu=250m"):
        _shared_flow(cluster, namespace, engine)


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def _shared_flow(cluster: Cluster, namespace: str, engine: str) -> None:
    from openai import OpenAI

    seed_demo(cluster, namespace)
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "api"}, "stringData": {"apiKey": API_KEY}})
    pod_s3 = os.environ["FTO_POD_S3_ENDPOINT"]
    custom = cluster.custom
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", _server(pod_s3, engine))
    replicas = REPLICAS[engine]
    for name in NAMES:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, _job(name, namespace, pod_s3))

    def status(name: str) -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        found: dict[str, Any] = body.get("status") or {}
        return found

    def server() -> dict[str, Any]:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelservers", "shared")
        found: dict[str, Any] = body.get("status") or {}
        return found

    def serving(name: str, run_: int) -> bool:
        s = status(name)
        if s.get("phase") == "Failed":
            raise AssertionError(f"{name} failed: {s.get('error')}")
        return s.get("phase") == "Serving" and (s.get("endpoint") or {}).get("run") == run_

    _until("three adapters served", lambda: all(serving(n, 1) for n in NAMES), timeout=1500, every=5)
    converged = _until(
        "every replica holding all three",
        lambda: (
            (s := server())["readyReplicas"] == replicas
            and len(s["loaded"]) == replicas
            and all(sorted(r["adapters"]) == ["alpha@1", "beta@1", "gamma@1"] for r in s["loaded"])
            and s
        ),
        timeout=300,
    )
    assert converged["capacityLeft"] == 1 and converged["endpoint"].endswith(f"shared-server.{namespace}.svc:8000/v1")
    for name in NAMES:  # no Deployment of their own; every one answers to the shared endpoint
        assert status(name)["endpoint"]["url"] == converged["endpoint"]
        assert not cluster.apps.list_namespaced_deployment(namespace, label_selector=f"finetune.dev/job={name}").items

    with port_forward(cluster.kubeconfig, namespace, "shared-server", 8000) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, max_retries=0, timeout=120)
        _until("the endpoint through port-forward", lambda: _models(client), timeout=60, every=1)
        assert {"shared", *NAMES} <= set(_models(client))

        def ask(model: str) -> str:
            reply = client.chat.completions.create(
                model=model,
                max_tokens=12,
                temperature=0,
                messages=[{"role": "user", "content": "How do I reset my password?"}],
            )
            assert reply.model == model and reply.usage is not None and reply.usage.completion_tokens > 0
            return reply.choices[0].message.content or ""

        for model in ("shared", *NAMES):
            ask(model)

        # retrain alpha while beta is being asked, non-stop: run 2 replaces run 1, no request fails
        failures: list[str] = []
        rounds: list[float] = []  # seconds each round (beta, then alpha) took
        stop = threading.Event()

        def keep_asking() -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    ask("beta")
                    ask("alpha")
                    rounds.append(round(time.monotonic() - started, 2))
                except Exception as error:  # recorded: the assertion below names it
                    failures.append(f"{type(error).__name__}: {error}")

        asker = threading.Thread(target=keep_asking, daemon=True)
        asker.start()
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "alpha", {"spec": {"hyperparameters": {"learningRate": 1e-3}}}
        )
        try:
            _until("alpha run 2 served", lambda: serving("alpha", 2), timeout=900, every=5)
            _until(
                "run 2 on every replica",
                lambda: all("alpha@2" in r["adapters"] for r in server()["loaded"]),
                timeout=120,
            )
        finally:
            stop.set()
            asker.join(180)
        print(f"\n{engine}: {len(rounds)} rounds answered during alpha's retraining and swap, seconds {rounds}")
        assert not failures, failures[:3]
        assert len(rounds) >= 2, rounds
        cards = {c.id: c for c in client.models.list().data}
        assert "/run-2" in str(getattr(cards["alpha"], "root", ""))  # the folder of run 2 (both engines report it)
        if engine == "transformers":
            assert getattr(cards["alpha"], "run", None) == 2

        # delete gamma: it leaves the server
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gamma")
        _until("gamma unloaded", lambda: "gamma" not in _models(client), timeout=120)

    # a server pod deleted by hand comes back with every adapter
    pods = cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=model-server").items
    victim = pods[0].metadata.name
    cluster.core.delete_namespaced_pod(victim, namespace)
    back = _until(
        "a new replica with every adapter",
        lambda: (
            (s := server())["readyReplicas"] == replicas
            and victim not in {r["pod"] for r in s["loaded"]}
            and all(sorted(r["adapters"]) == ["alpha@2", "beta@1"] for r in s["loaded"])
            and len(s["loaded"]) == replicas
            and s
        ),
        timeout=600,
    )
    assert back["adapters"] and {a["name"] for a in back["adapters"]} == {"alpha", "beta"}
    # the server pods: non-root, no privilege escalation, the token only in the sidecar
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector="finetune.dev/component=model-server").items:
        assert pod.spec.security_context.run_as_non_root is True
        assert pod.spec.automount_service_account_token is False
        for container in pod.spec.containers:
            assert container.security_context.allow_privilege_escalation is False
            mounts = {m.name for m in container.volume_mounts or []}
            assert ("sync-token" in mounts) == (container.name == "adapters"), container.name


def _models(client: Any) -> list[str]:
    try:
        return [m.id for m in client.models.list().data]
    except Exception:
        return []
