"""A tracked FineTuneJob on the real node: the trainer image, in a pod, logs its run to a real MLflow tracking
server (PyPI `mlflow`, started here on the bridge gateway, where pods reach the host), and the operator, from its
image through the chart, puts the run's id and URL into the status.

The tiny random Llama keeps the training short; what is checked is the chain: spec.tracking -> trainer config ->
the trainer's MLflow run (tags with the FineTuneJob's identity, parameters, step metrics, the report as an
artifact) -> status.tracking and the TrackingDegraded condition; and the TensorBoard event files in S3.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, s3_client
from tests.support.mlflow_server import mlflow_server as start_mlflow_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` listening on the bridge gateway (the address pods reach the host's S3 forwarder on)."""
    host = urlsplit(os.environ["FTO_POD_S3_ENDPOINT"]).hostname
    assert host, os.environ["FTO_POD_S3_ENDPOINT"]
    with start_mlflow_server(tmp_path, host=host) as url:
        yield url


@pytest.fixture
def s3() -> Any:
    return s3_client()


@pytest.fixture
def tiny_inputs(tmp_path: Path, s3: Any) -> Iterator[str]:
    """A bucket with a tiny base model (model/) and 48 chat records (data/train.jsonl); yields the bucket."""
    from finetune_trainer.devtools.tiny import build_causal_lm, train_tokenizer, word_corpus

    bucket = "e2e-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=bucket)
    corpus = word_corpus()
    model = build_causal_lm(tmp_path / "model", train_tokenizer(corpus))
    for path in model.iterdir():
        s3.upload_file(str(path), bucket, f"model/{path.name}")
    records = [
        {"messages": [{"role": "user", "content": line}, {"role": "assistant", "content": line.split()[0]}]}
        for line in corpus[:48]
    ]
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    s3.put_object(Bucket=bucket, Key="data/train.jsonl", Body=body)
    yield bucket
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)


def test_a_tracked_job_shows_its_run_in_mlflow_and_its_tensorboard_files_in_s3(
    cluster: Cluster, namespace: str, installed: str, mlflow_server: str, tiny_inputs: str, s3: Any
) -> None:
    from mlflow import MlflowClient

    bucket = tiny_inputs
    keys = {
        "AWS_ACCESS_KEY_ID": os.environ["FTO_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["FTO_S3_SECRET_KEY"],
    }
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": keys})
    experiment = f"e2e-{namespace}"
    manifest: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "tracked"},
        "spec": {
            "baseModel": {"uri": f"s3://{bucket}/model/"},
            "dataset": {
                "train": {"uri": f"s3://{bucket}/data/train.jsonl"},
                "schema": "chat",
                "maxSeqLength": 64,
                "split": {"validation": 0.125, "test": 0.125},
            },
            "method": {"type": "lora", "lora": {"rank": 4, "alpha": 8}},
            "hyperparameters": {"maxSteps": 6, "batchSize": 4, "learningRate": 0.01},
            "checkpointing": {"intervalSteps": 3},
            "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},
            "output": {"uri": f"s3://{bucket}/out/"},
            "storage": {"credentialsSecret": "s3-creds", "endpoint": os.environ["FTO_POD_S3_ENDPOINT"]},
            "tracking": {"mlflow": {"trackingUri": mlflow_server, "experiment": experiment}},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    status: dict[str, Any] = {}
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tracked")
        status = body.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(2)
    assert status.get("phase") == "Succeeded", status

    tracking = status["tracking"]
    assert tracking["run"] == 1 and "degraded" not in tracking, tracking
    run_id = tracking["mlflow"]["runId"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (
        conditions["TrackingDegraded"]["status"] == "False" and conditions["TrackingDegraded"]["reason"] == "Tracking"
    )

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert tracking["mlflow"]["url"] == f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    assert client.get_experiment(run.info.experiment_id).name == experiment and run.info.status == "FINISHED"
    uid = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tracked")["metadata"]["uid"]
    assert {k: v for k, v in run.data.tags.items() if k.startswith("finetune.dev/")} == {
        "finetune.dev/namespace": namespace,
        "finetune.dev/name": "tracked",
        "finetune.dev/run": "1",
        "finetune.dev/uid": uid,
    }
    assert run.data.params["hyperparameters.maxSteps"] == "6" and run.data.params["method.lora.rank"] == "4"
    assert sorted(m.step for m in client.get_metric_history(run_id, "train_loss")) == list(range(1, 7))
    assert run.data.metrics["test_loss"] == pytest.approx(status["metrics"]["test"]["loss"])
    names = {item.path for item in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "memory_plan.json"} <= names, names

    tensorboard = s3.list_objects_v2(Bucket=bucket, Prefix="out/run-1/tensorboard/").get("Contents", [])
    assert tensorboard and all(item["Size"] > 0 for item in tensorboard)
    assert status["artifacts"]["tensorboard"] == f"s3://{bucket}/out/run-1/tensorboard/"
