"""Progress reaches the FineTuneJob's progress ConfigMap through the API server, one merged JSON document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_trainer.training.progress import PROGRESS_KEY, Reporter, Throttle, config_map_sink

pytestmark = pytest.mark.cluster


def test_reporter_writes_the_merged_progress_into_its_config_map(cluster: Any, namespace: str) -> None:
    from kubernetes import client

    name = "progress-test-progress"
    cluster.core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name)))
    now = [1_800_000_000.0]
    reporter = Reporter(3, config_map_sink(namespace, name, cluster.api_client), Throttle(5, 30), clock=lambda: now[0])
    reporter.report(
        "training",
        step=40,
        total=100,
        epoch=0.4,
        loss=1.5,
        learning_rate=1e-4,
        tokens_per_second=900.0,
        seconds_per_step=0.5,
        last_checkpoint=20,
    )
    now[0] += 1
    reporter.report("training", step=41, total=100)  # throttled: not sent
    now[0] += 10
    reporter.report("evaluating", force=True, step=100, total=100)
    assert reporter.failures == 0
    data = cluster.core.read_namespaced_config_map(name, namespace).data
    progress = json.loads(data[PROGRESS_KEY])
    assert progress["stage"] == "evaluating" and progress["step"] == 100 and progress["percent"] == 100
    assert progress["run"] == 3 and progress["updatedAt"] == "2027-01-15T08:00:11Z"
    # merged as a merge patch would: values absent from the last report stay
    assert progress["lastCheckpointStep"] == 20 and progress["loss"] == 1.5
    assert "estimatedFinishTime" not in progress  # finished: the stale estimate was removed
