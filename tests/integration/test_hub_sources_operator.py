"""hf:// sources through the operator on a real API server: only the validation pod gets the hub endpoint and the
token (from its Secret, never its value), the commits the check resolved reach status.validation.sources, the
server loads the base model from the check's copy, and a later run that reuses the passed check has the commits
pinned in its trainer config. kwok plays the validate pod (its
summary, as tests/trainer/test_hub_sources.py shows the real trainer writes it)."""

from __future__ import annotations

import json
import time
from typing import Any

from kubernetes import client

from tests.integration.conftest import Jobs, ftj_manifest, success_message
from tests.support.waiting import wait_for

COMMIT = "0123456789abcdef0123456789abcdef01234567"
DATA_COMMIT = "89abcdef0123456789abcdef0123456789abcdef"
TOKEN = "hf_not_a_real_token_but_a_secret_one"


def _sources(name: str) -> list[dict[str, Any]]:
    cache = f"s3://artifacts/{name}/hub-cache"
    return [
        {
            "field": "baseModel.uri",
            "uri": "hf://acme/tiny",
            "revision": "main",
            "commit": COMMIT,
            "cachedUri": f"{cache}/models/acme/tiny/{COMMIT}/",
            "copiedFiles": 6,
            "copiedBytes": 1000,
        },
        {
            "field": "dataset.train.uri",
            "uri": "hf://datasets/acme/chat",
            "revision": "v1",
            "commit": DATA_COMMIT,
            "cachedUri": f"{cache}/datasets/acme/chat/{DATA_COMMIT}/",
            "copiedFiles": 2,
            "copiedBytes": 100,
        },
    ]


def _env(owner: Any) -> dict[str, Any]:
    """The trainer container's environment of a Job or of a (data-check) pod."""
    spec = owner.spec.template.spec if isinstance(owner, client.V1Job) else owner.spec
    return {e.name: e for e in spec.containers[0].env}


def _component(jobs: Jobs, namespace: str, name: str, component: str, run: int) -> Any:
    return next(
        (
            j
            for j in jobs.training_jobs(namespace, name)
            if j.metadata.labels["finetune.dev/component"] == component
            and j.metadata.labels.get("finetune.dev/run") == str(run)
        ),
        None,
    )


def _serving_containers(cluster: Any, namespace: str, name: str) -> list[Any]:
    deployments = cluster.apps.list_namespaced_deployment(namespace, label_selector="finetune.dev/component=serving")
    return [c for d in deployments.items for c in d.spec.template.spec.containers]


def test_the_token_reaches_only_the_check_and_the_commits_reach_status_and_the_next_run(
    operator_factory: Any, cluster: Any, jobs: Jobs, namespace: str
) -> None:
    name = "hub-job"
    cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": TOKEN})
    )
    operator_factory(namespace, args=["--validation", "--hub-endpoint", "http://hub-mirror.test:8090"])
    jobs.create(
        namespace,
        ftj_manifest(
            name,
            baseModel={"uri": "hf://acme/tiny", "tokenSecret": {"name": "hf-token"}},
            dataset={"train": {"uri": "hf://datasets/acme/chat", "revision": "v1"}, "schema": "chat"},
            serving={"enabled": True, "replicas": 1},
        ),
    )
    check = jobs.check_pod(namespace, name)
    env = _env(check)
    assert env["HF_ENDPOINT"].value == "http://hub-mirror.test:8090"
    ref = env["FTO_HF_TOKEN_BASE_MODEL"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("hf-token", "token")
    assert "FTO_HF_TOKEN_TRAIN" not in env  # the dataset names no tokenSecret
    assert TOKEN not in json.dumps(cluster.core.api_client.sanitize_for_serialization(check))
    config = cluster.core.read_namespaced_config_map(f"{name}-r1-config", namespace).data["config.json"]
    assert "tokenSecret" not in config and TOKEN not in config

    summary = {"schema": "chat", "records": {"train": 80, "validation": 10, "test": 10}, "sources": _sources(name)}
    validated = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": summary})
    jobs.finish_pod(namespace, check.metadata.name, 0, validated)
    training = wait_for("the training Job", lambda: _component(jobs, namespace, name, "trainer", 1), timeout=60)
    assert not [n for n in _env(training) if n.startswith(("HF_ENDPOINT", "FTO_HF_TOKEN"))]
    status = jobs.status(namespace, name)
    assert status["validation"]["sources"] == _sources(name)
    assert TOKEN not in json.dumps(status)
    jobs.finish_pod(namespace, jobs.running_pod(namespace, training.metadata.name).metadata.name, 0, success_message())
    served = jobs.wait_phase(namespace, name, "Serving", timeout=90)
    # the server loads the base model from the check's copy at the recorded commit, never from the hub
    cached = _sources(name)[0]["cachedUri"]
    assert served["published"]["baseModelUri"] == cached
    serve = json.loads(cluster.core.read_namespaced_config_map(f"{name}-serve", namespace).data["serve.json"])
    assert serve["baseModelUri"] == cached
    assert not [e for c in _serving_containers(cluster, namespace, name) for e in c.env or [] if "HF_TOKEN" in e.name]

    # a new run with the same data and model fields reuses the check: its config pins the recorded commits
    jobs.patch_spec(namespace, name, {"hyperparameters": {"learningRate": 0.0003}})
    wait_for("run 2's training Job", lambda: _component(jobs, namespace, name, "trainer", 2), timeout=60)
    assert jobs.check_pods(namespace, name, 2) == []
    pinned = json.loads(cluster.core.read_namespaced_config_map(f"{name}-r2-config", namespace).data["config.json"])
    assert pinned["baseModel"]["revision"] == COMMIT
    assert pinned["dataset"]["train"]["revision"] == DATA_COMMIT


def _wait_config_error(jobs: Jobs, namespace: str, pod: Any, message: str) -> None:
    """What the kubelet writes when it cannot resolve a container's secretKeyRef: the pod stays Pending with its
    container waiting in CreateContainerConfigError (kwok's stages write no such state, so the test does)."""
    waiting = {"reason": "CreateContainerConfigError", "message": message}
    container = {"name": pod.spec.containers[0].name, "image": pod.spec.containers[0].image, "ready": False}
    jobs.cluster.core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "Ready", "status": "False"}, {"type": "ContainersReady", "status": "False"}],
                "containerStatuses": [{**container, "restartCount": 0, "state": {"waiting": waiting}}],
            }
        },
    )


def test_a_token_secret_or_key_that_does_not_exist_is_secret_missing_naming_the_field_and_uses_no_attempt(
    operator_factory: Any, cluster: Any, jobs: Jobs, namespace: str
) -> None:
    name = "hub-no-token"
    args = ["--validation", "--hub-endpoint", "http://hub-mirror.test:8090", "--secret-recheck-seconds", "1"]
    operator_factory(namespace, args=args)
    jobs.create(
        namespace,
        ftj_manifest(
            name,
            baseModel={"uri": "hf://acme/gated", "tokenSecret": {"name": "hf-token"}},
            dataset={"train": {"uri": "s3://data/train.jsonl"}, "schema": "chat"},
        ),
    )

    def error() -> dict[str, Any]:
        return jobs.status(namespace, name).get("error") or {}

    # no Secret: looked up by its metadata before the validation Job, which is not made while it is absent
    wait_for("SecretMissing", lambda: error().get("code") == "SecretMissing", timeout=30)
    status = jobs.status(namespace, name)
    assert status["phase"] == "Pending", status
    message = status["error"]["message"]
    assert message.startswith("baseModel.tokenSecret names Secret 'hf-token', which does not exist in namespace")
    assert f"kubectl -n {namespace} create secret generic hf-token --from-literal=token=..." in message
    time.sleep(2)  # two rechecks
    assert jobs.check_pods(namespace, name) == []

    # the Secret is made with another key: the check's pod is made, and waits with the kubelet naming the key
    cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"hf": TOKEN})
    )
    pod = jobs.check_pod(namespace, name)
    _wait_config_error(jobs, namespace, pod, f"couldn't find key token in Secret {namespace}/hf-token")
    wait_for("the missing key", lambda: "has no key 'token'" in error().get("message", ""), timeout=30)
    assert error()["code"] == "SecretMissing" and jobs.status(namespace, name)["phase"] == "Pending"
    assert "baseModel.tokenSecret" in error()["message"] and "set baseModel.tokenSecret.key" in error()["message"]
    assert TOKEN not in json.dumps(jobs.status(namespace, name))
    # no attempt used: no pod failed, and the check still waits with the same one
    assert [p.metadata.name for p in jobs.check_pods(namespace, name)] == [pod.metadata.name]

    # fixed (tokenSecret.key: the kubelet starts the container once it resolves): the check goes on, no error
    jobs.cluster.core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": pod.spec.containers[0].name,
                        "image": pod.spec.containers[0].image,
                        "ready": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": "2026-12-07T00:00:00Z"}},
                    }
                ],
            }
        },
    )
    jobs.wait_phase(namespace, name, "Validating", timeout=30)
    assert not jobs.status(namespace, name).get("error")
