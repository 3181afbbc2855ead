"""Progress reaches `status.progress` of a real FineTuneJob through the API server (merge patch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from finetune_trainer.training.progress import GROUP, PLURAL, VERSION, Reporter, Throttle, kubernetes_sink

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"


def test_reporter_patches_status_progress(cluster: Any, namespace: str) -> None:
    manifest = yaml.safe_load(EXAMPLE.read_text())
    manifest["metadata"] = {"name": "progress-test", "namespace": namespace}
    manifest["spec"]["suspend"] = True  # keep an operator, if one runs, from starting pods
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
    now = [1_800_000_000.0]
    reporter = Reporter(
        3,
        kubernetes_sink(namespace, "progress-test", cluster.api_client),
        Throttle(5, 30),
        clock=lambda: now[0],
    )
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
    status = cluster.custom.get_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "progress-test")
    progress = status["status"]["progress"]
    assert progress["stage"] == "evaluating" and progress["step"] == 100 and progress["percent"] == 100
    assert progress["run"] == 3 and progress["updatedAt"] == "2027-01-15T08:00:11Z"
    # a merge patch replaces `progress` field by field: values absent from the last patch stay
    assert progress["lastCheckpointStep"] == 20 and progress["loss"] == 1.5
    assert "estimatedFinishTime" not in progress  # finished: the stale estimate was removed
    assert status["spec"]["suspend"] is True
