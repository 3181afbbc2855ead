"""Gate and publishing on a real API server: kwok finishes the training pod with metrics, and
kwok's serving pods become Ready, so the Deployment turns Available like a real one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from .conftest import Jobs, Operator, ftj_manifest, success_message, wait_for

pytestmark = pytest.mark.cluster

GATE = {"gate": [{"metric": "test_loss", "max": 1.8}]}


def _serving_job(name: str) -> dict[str, Any]:
    return ftj_manifest(name, evaluation=GATE, serving={"enabled": True, "replicas": 1})


def _train(jobs: Jobs, namespace: str, name: str, run: int, loss: float) -> None:
    pod = jobs.running_pod(namespace, f"{name}-r{run}")
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message(loss))


def _deployments(jobs: Jobs, namespace: str, name: str) -> list[Any]:
    uid = jobs.get(namespace, name)["metadata"]["uid"]
    items: list[Any] = jobs.cluster.apps.list_namespaced_deployment(
        namespace, label_selector=f"finetune.dev/job-uid={uid},finetune.dev/component=serving"
    ).items
    return items


def _served_model(jobs: Jobs, namespace: str, name: str) -> str:
    config = jobs.cluster.core.read_namespaced_config_map(f"{name}-serve", namespace).data["serve.json"]
    return str(json.loads(config)["modelUri"])


def _serve_run_one(jobs: Jobs, namespace: str, name: str) -> dict[str, Any]:
    jobs.create(namespace, _serving_job(name))
    _train(jobs, namespace, name, 1, 1.2)
    return jobs.wait_phase(namespace, name, "Serving", timeout=90)


def test_gate_pass_publishes_deployment_and_endpoint(operator: Operator, jobs: Jobs, namespace: str) -> None:
    status = _serve_run_one(jobs, namespace, "pub")
    assert status["endpoint"] == {"url": f"http://pub.{namespace}.svc:8000/v1", "model": "pub", "run": 1}
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["GatePassed"]["status"] == "True"
    assert status["gate"]["results"][0] == {"metric": "test_loss", "value": 1.2, "max": 1.8, "passed": True}
    (deployment,) = _deployments(jobs, namespace, "pub")
    pod = deployment.spec.template.spec
    server = pod.containers[0]
    assert server.image == "registry.local/finetune-trainer:test"
    assert server.command[:4] == ["python", "-m", "finetune_trainer", "serve"]
    assert server.readiness_probe.http_get.path == "/readyz" and server.liveness_probe.http_get.path == "/healthz"
    assert pod.security_context.run_as_non_root is True
    assert deployment.spec.strategy.rolling_update.max_unavailable == 0
    assert _served_model(jobs, namespace, "pub") == "s3://artifacts/pub/run-1/model/"
    service = jobs.cluster.core.read_namespaced_service("pub", namespace)
    assert service.spec.ports[0].port == 8000 and service.spec.selector == deployment.spec.selector.match_labels


def test_gate_fail_publishes_nothing(operator: Operator, jobs: Jobs, namespace: str) -> None:
    jobs.create(namespace, _serving_job("nogo"))
    _train(jobs, namespace, "nogo", 1, 2.5)
    status = jobs.wait_phase(namespace, "nogo", "Failed")
    assert status["error"]["code"] == "GateFailed" and "test_loss=2.5" in status["error"]["message"]
    assert status["gate"]["passed"] is False and status.get("endpoint") is None
    assert _deployments(jobs, namespace, "nogo") == []
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False"


def test_run_two_passing_moves_the_deployment_to_run_two(operator: Operator, jobs: Jobs, namespace: str) -> None:
    _serve_run_one(jobs, namespace, "roll")
    jobs.patch_spec(namespace, "roll", {"hyperparameters": {"learningRate": 1e-4}})
    wait_for(
        "run 2 training",
        lambda: (
            jobs.status(namespace, "roll").get("phase") == "Training" and jobs.status(namespace, "roll").get("run") == 2
        ),
    )
    assert jobs.status(namespace, "roll")["endpoint"]["run"] == 1  # run 1 keeps serving meanwhile
    _train(jobs, namespace, "roll", 2, 1.0)
    wait_for(
        "endpoint on run 2",
        lambda: (jobs.status(namespace, "roll").get("endpoint") or {}).get("run") == 2,
        timeout=90,
    )
    assert _served_model(jobs, namespace, "roll") == "s3://artifacts/roll/run-2/model/"
    (deployment,) = _deployments(jobs, namespace, "roll")
    assert deployment.spec.template.metadata.labels["finetune.dev/run"] == "2"
    assert jobs.wait_phase(namespace, "roll", "Serving")["published"]["run"] == 2


def test_run_two_failing_its_gate_keeps_run_one_serving(operator: Operator, jobs: Jobs, namespace: str) -> None:
    _serve_run_one(jobs, namespace, "keep")
    (before,) = _deployments(jobs, namespace, "keep")
    jobs.patch_spec(namespace, "keep", {"hyperparameters": {"learningRate": 1e-4}})
    wait_for("run 2", lambda: jobs.status(namespace, "keep").get("run") == 2)
    _train(jobs, namespace, "keep", 2, 2.5)
    status = jobs.wait_phase(namespace, "keep", "Failed")
    assert status["error"]["code"] == "GateFailed" and "run 2" in status["error"]["message"]
    assert status["endpoint"]["run"] == 1 and status["published"]["run"] == 1
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "serving run 1" in ready["message"]
    (after,) = _deployments(jobs, namespace, "keep")
    assert after.metadata.generation == before.metadata.generation
    assert _served_model(jobs, namespace, "keep") == "s3://artifacts/keep/run-1/model/"


def test_vllm_engine_is_published_with_its_model_fetcher(operator: Operator, jobs: Jobs, namespace: str) -> None:
    manifest = ftj_manifest(
        "fast",
        evaluation=GATE,
        serving={"enabled": True, "engine": "vllm"},
        method={"type": "lora", "lora": {"rank": 24}},
    )
    jobs.create(namespace, manifest)
    _train(jobs, namespace, "fast", 1, 1.2)
    status = jobs.wait_phase(namespace, "fast", "Serving", timeout=90)
    assert status["endpoint"]["model"] == "fast"
    (deployment,) = _deployments(jobs, namespace, "fast")
    pod = deployment.spec.template.spec
    fetch = pod.init_containers[0].command
    assert fetch[:4] == ["python", "-m", "finetune_trainer", "fetch"] and "s3://artifacts/fast/run-1/model/" in fetch
    server = pod.containers[0]
    assert server.args[server.args.index("--max-lora-rank") + 1] == "32"
    # vLLM on loopback behind the gateway, which alone holds the Service's port
    assert [c.name for c in pod.containers] == ["server", "gateway"]
    assert server.args[server.args.index("--host") + 1] == "127.0.0.1" and not server.ports
    assert [p.container_port for p in pod.containers[1].ports] == [8000]
    assert server.resources.limits["nvidia.com/gpu"] == "1"
