"""Chaos, the real node: a real training pod evicted through the Eviction API (as `kubectl drain` does), then the
node's kubelet restarted under the pod that replaced it (tests/support/real_node.py).

What must hold: the evicted trainer checkpoints on SIGTERM and exits Preempted (75); its replacement resumes from
that checkpoint (steps lost: at most one checkpoint interval); the kubelet restart kills nothing (same pod, no
container restart, training goes on); the run succeeds. The kubelet is back and the node Ready before the test
ends (`Components.restart` waits for it), so the tests after this one find the node as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, ROOT, VERSION
from tests.support import real_node
from tests.support.chaos import Components
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]


def test_an_evicted_trainer_resumes_and_a_kubelet_restart_loses_nothing(
    cluster: Cluster, namespace: str, images: dict[str, str], operator_crds: None, tmp_path: Path
) -> None:
    import boto3

    if not cluster.local:
        pytest.skip("restarts the local cluster's kubelet (hack/cluster.sh); not possible on $KUBECONFIG")
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
    bucket = "t-evict-" + uuid.uuid4().hex[:10]
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
        body = real_node.manifest("evicted", model, data, bucket, os.environ["FTO_POD_S3_ENDPOINT"])
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        figures = real_node.disrupt(cluster.core, cluster.custom, namespace, "evicted", Components())
        print(figures)
        status: Any = wait_for(
            "the run to succeed",
            lambda: (
                (
                    s := cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "evicted")[
                        "status"
                    ]
                ).get("phase")
                in ("Succeeded", "Failed")
                and s
            ),
            timeout=900,
            interval=1,
        )
    finally:
        operator.terminate()
        operator.wait(30)
    eviction, kubelet = figures["eviction"], figures["kubelet_restart"]
    assert (eviction["exit_code"], eviction["code"]) == (75, "Preempted"), eviction
    assert eviction["steps_lost"] is not None and 0 <= eviction["steps_lost"] <= real_node.INTERVAL, eviction
    assert kubelet["same_pod_running"] and kubelet["container_restarts"] == 0, kubelet
    assert status["phase"] == "Succeeded", status
