"""Chaos, serving on the real node: a published model's two server pods rolled to a retrained run, then one of
them deleted, while 8 clients send requests without pause to whichever pods the Service has ready
(tests/support/serving_chaos.py). Not one request may fail: the rollout keeps maxUnavailable 0, the
PodDisruptionBudget keeps a pod up, and a pod being deleted sleeps in preStop while its endpoint is withdrawn,
then drains what it has in flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, ROOT, VERSION
from tests.support import real_node, serving_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_a_rollout_and_a_pod_deletion_under_load_fail_no_request(
    cluster: Cluster, namespace: str, images: dict[str, str], operator_crds: None, tmp_path: Path
) -> None:
    import boto3

    keys = {
        "AWS_ACCESS_KEY_ID": os.environ["FTO_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": os.environ["FTO_S3_SECRET_KEY"],
    }
    s3 = boto3.client(
        "s3",
        endpoint_url=os.environ["FTO_S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )
    bucket = "t-roll-" + uuid.uuid4().hex[:10]
    model, data = real_node.seed(s3, bucket, tmp_path)
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": keys})
    log = (tmp_path / "operator.log").open("wb")
    operator = subprocess.Popen(
        [sys.executable, "-m", "finetune_operator", "-n", namespace, "--health-port", "0", "--no-validation",
         "--trainer-image", images["FTO_TRAINER_IMAGE"], "--image-pull-policy", "Never"],
        env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONPATH": str(ROOT / "operator")},
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        body = serving_chaos.manifest("rolled", model, data, bucket, os.environ["FTO_POD_S3_ENDPOINT"])
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        figures = serving_chaos.disrupt(cluster.core, cluster.custom, cluster.api_client, namespace, "rolled")
    finally:
        operator.terminate()
        operator.wait(30)
    print({k: v for k, v in figures.items() if k != "failures"})
    assert figures["failed"] == 0, figures["failures"][:10]
    assert figures["rollout"]["requests"] > 0 and figures["pod_deletion"]["requests"] > 0, figures
    # requests really crossed both events: run 1's two pods, run 2's two, and the deleted one's replacement
    assert len(figures["answered_by_pod"]) >= 5, figures["answered_by_pod"]
