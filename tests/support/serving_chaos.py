"""A published model's serving pods rolled to a retrained run, then one deleted, under a load at concurrency 8.

The real trainer image trains a tiny Llama on the real node (a few steps: this is about serving) and our engine
serves it with two replicas, the chart's PodDisruptionBudget and the preStop drain. While `EndpointLoad` sends
requests to the Service's ready pods without pause:
- rollout: a spec change retrains (run 2); the operator rolls the Deployment to it (maxUnavailable 0);
- deletion: one of run 2's pods is deleted as a person or a node drain would, and its replacement comes up.
Figures: requests sent and failed in each phase, seconds for each, p50/p99 latency. Target: 0 failed.

Shared by tests/e2e/test_chaos_serving.py and `bench/chaos.py` (fault `serving`); the caller runs the operator
on `namespace` and seeds S3 with `real_node.seed`.
"""

from __future__ import annotations

import time
from typing import Any

from tests.support import real_node
from tests.support.endpoint_load import EndpointLoad, ready_endpoints
from tests.support.waiting import wait_for

GROUP, VERSION, PLURAL = real_node.GROUP, real_node.VERSION, real_node.PLURAL
REPLICAS = 2
CONCURRENCY = 8
PROMPT = "what is two and three ?"


def connect(address: str) -> Any:
    """The official OpenAI client, to one pod's port (no retries: a retried failure would be hidden)."""
    from openai import OpenAI

    return OpenAI(base_url=f"http://{address}:8000/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client: Any, model: str) -> None:
    """One completion; anything but a finished answer from `model` raises (the tiny model may answer with its end
    token at once: an empty text is still an answer, an error status or a cut connection is not)."""
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=4, temperature=0)
    choice = reply.choices[0]
    assert reply.model == model and choice.finish_reason in ("stop", "length") and reply.usage.prompt_tokens > 0, reply


def manifest(name: str, model: str, data: str, bucket: str, pod_s3_endpoint: str) -> dict[str, Any]:
    """real_node's tiny run, short, served by two replicas of our engine with small requests (the node has two
    cores, and the pods of a rollout are three at once)."""
    body = real_node.manifest(name, model, data, bucket, pod_s3_endpoint)
    spec = body["spec"]
    spec["hyperparameters"]["maxSteps"] = 10
    spec["resources"]["cpu"] = "250m"
    spec["serving"] = {
        "enabled": True,
        "replicas": REPLICAS,
        "engine": "transformers",
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        # explicitly open: this measures availability through a roll (connect() sends no key); the key a manifest
        # gets by default is tested in tests/integration/test_serving_keys.py and tests/e2e/test_quickstart.py
        "allowUnauthenticated": True,
    }
    return body


def _status(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    return dict(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name).get("status") or {})


def _serving(custom: Any, namespace: str, name: str, run: int) -> dict[str, Any] | None:
    status = _status(custom, namespace, name)
    if status.get("phase") == "Failed":
        raise AssertionError(f"{name} failed: {status.get('error') or status}")
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or [])
    if status.get("phase") == "Serving" and ready and (status.get("endpoint") or {}).get("run") == run:
        return status
    return None


def _pods_by_run(core: Any, namespace: str, name: str) -> dict[str, list[Any]]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"finetune.dev/component=serving,finetune.dev/job={name}")
    found: dict[str, list[Any]] = {}
    for pod in pods.items:
        found.setdefault(pod.metadata.labels.get("finetune.dev/run", ""), []).append(pod)
    return found


def _settled(core: Any, api_client: Any, namespace: str, name: str, service: str, run: int) -> bool:
    """Only `run`'s pods are left, none terminating, and all REPLICAS of them are ready endpoints."""
    pods = _pods_by_run(core, namespace, name)
    if set(pods) != {str(run)} or any(p.metadata.deletion_timestamp for p in pods[str(run)]):
        return False
    return len(pods[str(run)]) == REPLICAS and len(ready_endpoints(api_client, namespace, service)) == REPLICAS


def _phase(load: EndpointLoad, before: Any, started: float) -> dict[str, Any]:
    after = load.report()
    return {
        "seconds": round(time.monotonic() - started, 1),
        "requests": after.sent - before.sent,
        "failed": len(after.failures) - len(before.failures),
    }


def disrupt(core: Any, custom: Any, api_client: Any, namespace: str, name: str) -> dict[str, Any]:
    """FineTuneJob `name` (from `manifest`) exists in `namespace`; once run 1 serves, roll to run 2 and delete a
    pod under load. Returns the figures, and every failure seen."""
    status = wait_for("run 1 served", lambda: _serving(custom, namespace, name, 1), 1200, 2)
    service = status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
    model = status["endpoint"]["model"]
    wait_for("both replicas ready", lambda: _settled(core, api_client, namespace, name, service, 1), 300, 1)

    load = EndpointLoad(
        api_client, namespace, service, connect, lambda client: ask(client, model), concurrency=CONCURRENCY
    )
    with load:
        load.wait_answered(2 * CONCURRENCY, timeout=300)  # a baseline: requests answered before anything moves
        started, before = time.monotonic(), load.report()
        patch = {"spec": {"hyperparameters": {"learningRate": 0.005}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, patch)
        wait_for("run 2 served", lambda: _serving(custom, namespace, name, 2), 1200, 1)
        wait_for("the roll to run 2", lambda: _settled(core, api_client, namespace, name, service, 2), 600, 0.5)
        rollout = _phase(load, before, started)

        started, before = time.monotonic(), load.report()
        victim = _pods_by_run(core, namespace, name)["2"][0].metadata.name
        core.delete_namespaced_pod(victim, namespace)
        wait_for(
            "a replacement of the deleted pod",
            lambda: (
                victim not in {p.metadata.name for p in _pods_by_run(core, namespace, name).get("2", [])}
                and _settled(core, api_client, namespace, name, service, 2)
            ),
            600,
            0.5,
        )
        deletion = _phase(load, before, started)
        load.wait_answered(2 * CONCURRENCY, timeout=300)  # and answered by the settled pods afterwards
    report = load.report()
    return {
        "replicas": REPLICAS,
        "concurrency": CONCURRENCY,
        "rollout": rollout,
        "pod_deletion": deletion,
        **report.summary(),
        "failures": report.failures,
    }
