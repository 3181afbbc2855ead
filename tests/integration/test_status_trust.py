"""The operator alone decides (issue 24, attack 2), on a real API server: a `status.published` that someone else
wrote (a namespace admin who may write the status; the trainer no longer may, test_trainer_rbac.py) is not served,
is not in a ModelServer's desired list, and is put back to what the operator derives; the trainer's progress comes
through its ConfigMap and only what passes the checks shows in `status.progress`.

kwok plays the training pods (they run until a test finishes them) and the serving pods (they turn Ready)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from .conftest import GROUP, PLURAL, VERSION, Jobs, Operator, ftj_manifest, success_message, wait_for
from .test_modelserver import _create_server, _desired, _server, _server_status
from .test_trainer_rbac import _client_as

pytestmark = pytest.mark.cluster

GATE = {"gate": [{"metric": "test_loss", "max": 1.8}]}
FOREIGN = "s3://another-tenants-bucket/their-job/run-3/model/"


def _forge_published(jobs: Jobs, namespace: str, name: str, **fields: Any) -> None:
    """What a namespace admin allowed to write the status can do (admin client, status subresource)."""
    published = {
        "run": 1,
        "task": "causal-lm",
        "baseModelUri": "s3://models/tiny/",
        "modelUri": FOREIGN,
        "adapter": True,
        "loraRank": 16,
        **fields,
    }
    jobs.cluster.custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"published": published}}
    )


def _training(jobs: Jobs, namespace: str, name: str, run: int = 1) -> None:
    jobs.running_pod(namespace, f"{name}-r{run}")
    wait_for(
        f"{name} run {run} Training",
        lambda: (s := jobs.status(namespace, name)).get("phase") == "Training" and s.get("run") == run,
    )


def _serving_objects(jobs: Jobs, namespace: str, name: str) -> list[str]:
    uid = jobs.get(namespace, name)["metadata"]["uid"]
    selector = f"finetune.dev/job-uid={uid},finetune.dev/component=serving"
    deployments = jobs.cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items
    configs = jobs.cluster.core.list_namespaced_config_map(namespace, label_selector=selector).items
    return [f"Deployment/{d.metadata.name}" for d in deployments] + [f"ConfigMap/{c.metadata.name}" for c in configs]


def _served_model(jobs: Jobs, namespace: str, name: str) -> str:
    config = jobs.cluster.core.read_namespaced_config_map(f"{name}-serve", namespace).data["serve.json"]
    return str(json.loads(config)["modelUri"])


def test_the_trainers_token_cannot_write_the_job_status(operator: Operator, jobs: Jobs, namespace: str) -> None:
    """The attack as tried: anyone who may run a pod as `<job>-trainer` holds its token."""
    from kubernetes import client

    jobs.create(namespace, ftj_manifest("held", serving={"enabled": True, "replicas": 1}))
    _training(jobs, namespace, "held")
    as_trainer = client.CustomObjectsApi(_client_as(jobs.cluster, namespace, "held-trainer"))
    forged = {"status": {"published": {"run": 1, "modelUri": FOREIGN}, "progress": {"run": 1, "step": 5}}}
    with pytest.raises(client.ApiException) as refused:
        as_trainer.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "held", forged)
    assert refused.value.status == 403
    assert jobs.status(namespace, "held").get("published") is None


def test_a_published_model_forged_while_the_run_trains_is_not_served(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("victim", evaluation=GATE, serving={"enabled": True, "replicas": 1}))
    _training(jobs, namespace, "victim")
    _forge_published(jobs, namespace, "victim")
    wait_for("the forged record dropped", lambda: jobs.status(namespace, "victim").get("published") is None)
    time.sleep(2)  # a pass that served it would have applied the bundle by now
    assert _serving_objects(jobs, namespace, "victim") == []
    status = jobs.status(namespace, "victim")
    assert status["phase"] == "Training" and status.get("published") is None and status.get("endpoint") is None


def test_a_forged_model_uri_of_the_published_run_is_put_back(operator: Operator, jobs: Jobs, namespace: str) -> None:
    """Run 1 is served; while run 2 trains, the record of run 1 is carried over, and its model is re-derived."""
    jobs.create(namespace, ftj_manifest("kept", evaluation=GATE, serving={"enabled": True, "replicas": 1}))
    pod = jobs.running_pod(namespace, "kept-r1")
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message(1.2))
    jobs.wait_phase(namespace, "kept", "Serving", timeout=90)
    own = jobs.status(namespace, "kept")["published"]
    assert own["modelUri"] == "s3://artifacts/kept/run-1/model/"
    jobs.patch_spec(namespace, "kept", {"hyperparameters": {"learningRate": 1e-4}})
    _training(jobs, namespace, "kept", run=2)
    _forge_published(jobs, namespace, "kept")
    wait_for("the derived record back", lambda: jobs.status(namespace, "kept").get("published") == own)
    time.sleep(2)
    assert jobs.status(namespace, "kept")["published"] == own
    assert _served_model(jobs, namespace, "kept") == "s3://artifacts/kept/run-1/model/"


def test_a_forged_published_model_never_reaches_a_shared_servers_desired_list(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    _create_server(jobs, namespace, _server("shared", replicas=1))
    wait_for("the server's desired list", lambda: _desired(jobs, namespace, "shared") == {})
    jobs.create(namespace, ftj_manifest("tenant", evaluation=GATE, serving={"enabled": True, "server": "shared"}))
    _training(jobs, namespace, "tenant")
    _forge_published(jobs, namespace, "tenant")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:  # the server's passes (every FineTuneJob event queues one) see nothing
        assert _desired(jobs, namespace, "shared") == {}
        time.sleep(0.5)
    assert jobs.status(namespace, "tenant").get("published") is None  # put back by the FineTuneJob's pass
    status = _server_status(jobs, namespace, "shared")
    assert status.get("adapters") == [] and not status.get("refused")


def test_progress_comes_from_the_config_map_and_only_checked_values_show(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    from kubernetes import client

    jobs.create(namespace, ftj_manifest("prog"))
    _training(jobs, namespace, "prog")
    as_trainer = client.CoreV1Api(_client_as(jobs.cluster, namespace, "prog-trainer"))
    report = {
        "run": 1,
        "stage": "training",
        "step": 7,
        "totalSteps": 20,
        "percent": 900,  # out of range
        "loss": float("nan"),  # not finite
        "learningRate": "fast",  # not a number
        "published": {"modelUri": FOREIGN},  # not a progress field
        "tracking": {"mlflow": {"runId": "abc", "url": "x" * 5000}},  # the URL is too long
    }
    as_trainer.patch_namespaced_config_map("prog-progress", namespace, {"data": {"progress.json": json.dumps(report)}})
    shown = {"run": 1, "stage": "training", "step": 7, "totalSteps": 20, "tracking": {"mlflow": {"runId": "abc"}}}
    wait_for("the checked progress in status", lambda: jobs.status(namespace, "prog").get("progress") == shown)
    status = jobs.status(namespace, "prog")
    assert status.get("published") is None and status["phase"] == "Training"

    # the next report replaces it; an evaluating stage moves the phase, as the trainer's own reports did
    report = {"run": 1, "stage": "evaluating", "step": 20, "totalSteps": 20, "loss": 0.75}
    as_trainer.patch_namespaced_config_map("prog-progress", namespace, {"data": {"progress.json": json.dumps(report)}})
    wait_for("the new report", lambda: jobs.status(namespace, "prog").get("progress") == report)
    jobs.wait_phase(namespace, "prog", "Evaluating", timeout=20)
