"""hf:// sources through the operator on a real API server: only the validation pod gets the hub endpoint and the
token (from its Secret, never its value), the commits the check resolved reach status.validation.sources, the
server loads the base model from the check's copy, and a later run that reuses the passed check has the commits
pinned in its trainer config. kwok plays the validate pod (its
summary, as tests/trainer/test_hub_sources.py shows the real trainer writes it)."""

from __future__ import annotations

import json
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


def _env(job: Any) -> dict[str, Any]:
    return {e.name: e for e in job.spec.template.spec.containers[0].env}


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
    check = wait_for("the validation Job", lambda: _component(jobs, namespace, name, "validator", 1), timeout=60)
    env = _env(check)
    assert env["HF_ENDPOINT"].value == "http://hub-mirror.test:8090"
    ref = env["FTO_HF_TOKEN_BASE_MODEL"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("hf-token", "token")
    assert "FTO_HF_TOKEN_TRAIN" not in env  # the dataset names no tokenSecret
    assert TOKEN not in json.dumps(cluster.batch.api_client.sanitize_for_serialization(check))
    config = cluster.core.read_namespaced_config_map(f"{name}-r1-config", namespace).data["config.json"]
    assert "tokenSecret" not in config and TOKEN not in config

    summary = {"schema": "chat", "records": {"train": 80, "validation": 10, "test": 10}, "sources": _sources(name)}
    validated = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": summary})
    jobs.finish_pod(namespace, jobs.running_pod(namespace, check.metadata.name).metadata.name, 0, validated)
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
    assert _component(jobs, namespace, name, "validator", 2) is None
    pinned = json.loads(cluster.core.read_namespaced_config_map(f"{name}-r2-config", namespace).data["config.json"])
    assert pinned["baseModel"]["revision"] == COMMIT
    assert pinned["dataset"]["train"]["revision"] == DATA_COMMIT
