"""spec.tracking on a real API server with the real operator, the trainer played by kwok: the training pod gets the
credentials by secretKeyRef only, and the trainer's termination message puts the MLflow run into status.tracking
and a degradation into the TrackingDegraded condition and one Warning event."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from .conftest import Jobs, Operator, ftj_manifest, kwok_annotations, wait_for

pytestmark = pytest.mark.cluster

MLFLOW = "http://mlflow.mlops.svc:5000"
RUN = {"runId": "0af1", "experimentId": "3", "url": f"{MLFLOW}/#/experiments/3/runs/0af1"}
DEGRADED = {"reason": "TrackerUnreachable", "message": f"logging metrics at {MLFLOW}: ConnectionError: refused"}


def test_status_carries_the_mlflow_run_and_the_degradation(
    operator: Operator, jobs: Jobs, namespace: str, cluster: Any
) -> None:
    from kubernetes import client

    token = "tok-" + uuid.uuid4().hex
    cluster.core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="mlflow-creds"), string_data={"MLFLOW_TRACKING_TOKEN": token}
        ),
    )
    metrics = {"validation": {"loss": 1.45}, "test": {"loss": 1.4}}
    tracking = {"mlflow": RUN, "degraded": DEGRADED, "tensorboard": "s3://artifacts/tracked/run-1/tensorboard/"}
    message = json.dumps(
        {"code": "Succeeded", "message": "trained 12 steps", "run": 1, "metrics": metrics, "tracking": tracking}
    )
    manifest = ftj_manifest(
        "tracked",
        tracking={"mlflow": {"trackingUri": MLFLOW, "credentialsSecret": "mlflow-creds"}},
        podMetadata={"annotations": kwok_annotations(exit_code=0, message=message)},
    )
    jobs.create(namespace, manifest)
    status = jobs.wait_phase(namespace, "tracked", "Succeeded")

    assert status["tracking"] == {"run": 1, "mlflow": RUN, "degraded": DEGRADED}
    assert status["artifacts"]["tensorboard"] == "s3://artifacts/tracked/run-1/tensorboard/"
    conditions = {c["type"]: c for c in status["conditions"]}
    degraded = conditions["TrackingDegraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "TrackerUnreachable"
    assert conditions["Trained"]["status"] == "True"  # training went on

    def warning() -> list[Any]:
        events = cluster.core.list_namespaced_event(namespace, field_selector="involvedObject.name=tracked").items
        return [e for e in events if e.reason == "TrackingDegraded" and e.type == "Warning"]

    wait_for("the TrackingDegraded event", lambda: bool(warning()), timeout=30)
    assert len(warning()) == 1 and "ConnectionError" in warning()[0].message

    job = jobs.training_jobs(namespace, "tracked")[0]
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    ref = env["MLFLOW_TRACKING_TOKEN"].value_from.secret_key_ref
    assert (ref.name, ref.key, env["MLFLOW_TRACKING_TOKEN"].value) == ("mlflow-creds", "MLFLOW_TRACKING_TOKEN", None)
    config_maps = cluster.core.list_namespaced_config_map(namespace).items
    config = next(c for c in config_maps if c.metadata.name == "tracked-r1-config").data["config.json"]
    assert json.loads(config)["tracking"]["mlflow"] == {"trackingUri": MLFLOW, "experiment": f"{namespace}/tracked"}
    seen = json.dumps([status, config, [e.message for e in warning()]]) + str(job.to_dict())
    assert token not in seen
