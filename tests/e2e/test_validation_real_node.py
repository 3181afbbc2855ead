"""A dataset with a bad record, applied as a FineTuneJob on the real node: it fails in Validating, with the
file and the line, and no training Job is ever created (so no GPU is ever asked for).

The operator runs from its image through the chart (validation on, as it ships); the check is the trainer
image's own `finetune_trainer validate` in a pod on the real node, reading the data from the real S3 server.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, s3_client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

GOOD = {
    "messages": [
        {"role": "user", "content": "How do I reset my password?"},
        {"role": "assistant", "content": "Open Settings."},
    ]
}


@pytest.fixture
def bad_data(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A bucket with a tiny base model and a chat dataset whose line 3 is not JSON: (model URI, data URI)."""
    from finetune_trainer.devtools.tiny import build_causal_lm, train_tokenizer, word_corpus

    client = s3_client()
    bucket = "e2e-" + uuid.uuid4().hex[:12]
    client.create_bucket(Bucket=bucket)
    model = build_causal_lm(tmp_path / "model", train_tokenizer(word_corpus()))
    for path in model.iterdir():
        client.upload_file(str(path), bucket, f"model/{path.name}")
    lines = [json.dumps(GOOD), json.dumps(GOOD), '{"messages": [{"role": "user", "content": "oops"}', json.dumps(GOOD)]
    client.put_object(Bucket=bucket, Key="data/train.jsonl", Body=("\n".join(lines) + "\n").encode())
    yield f"s3://{bucket}/model/", f"s3://{bucket}/data/train.jsonl"
    for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=item["Key"])
    client.delete_bucket(Bucket=bucket)


def test_bad_records_fail_in_validating_and_no_training_job_is_ever_created(
    cluster: Cluster, namespace: str, installed: str, bad_data: tuple[str, str]
) -> None:
    model, data = bad_data
    keys = {
        "AWS_ACCESS_KEY_ID": os.environ["FTO_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["FTO_S3_SECRET_KEY"],
    }
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": keys})
    manifest: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad-data"},
        "spec": {
            "baseModel": {"uri": model},
            "dataset": {"train": {"uri": data}, "split": {"validation": 0.25, "test": 0.25}},
            "resources": {"gpus": 1, "cpu": "1", "memory": "2Gi"},
            "output": {"uri": f"s3://{data.split('/')[2]}/out/"},
            "storage": {"credentialsSecret": "s3-creds", "endpoint": os.environ["FTO_POD_S3_ENDPOINT"]},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    phases: list[str] = []
    status: dict[str, Any] = {}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        body = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "bad-data")
        status = body.get("status") or {}
        if status.get("phase") and (not phases or phases[-1] != status["phase"]):
            phases.append(status["phase"])
        components = {
            j.metadata.labels.get("finetune.dev/component")
            for j in cluster.batch.list_namespaced_job(namespace, label_selector="finetune.dev/job=bad-data").items
        }
        assert "trainer" not in components, f"a training Job was created for bad data (phases {phases})"
        if status.get("phase") == "Failed":
            break
        time.sleep(1)
    assert status.get("phase") == "Failed", f"phases {phases}, status {status}"
    assert "Validating" in phases, phases
    error = status["error"]
    assert error["code"] == "DatasetInvalid" and f"{data} line 3" in error["message"], error
    assert status["validation"]["passed"] is False
