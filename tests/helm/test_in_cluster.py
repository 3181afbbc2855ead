"""The chart with the operator running in the cluster, on the local cluster's real node (kubelet + containerd).

The operator image is built from the current sources (hack/build-images.sh) and imported into the node;
training pods still land on kwok's fake GPU nodes, scripted to succeed. What only a real container shows:
the restricted pod (non-root, read-only root filesystem, no capabilities) really starts, its probes pass,
in-cluster credentials carry the chart's RBAC, JSON logs, /metrics, and the chart's default of two replicas:
one leader (the Lease's holder) acts, upgrades roll with the Lease handed over.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.integration.conftest import Jobs, ftj_manifest, kwok_annotations, success_message
from tests.support.waiting import wait_for

from .chart import CHART, helm, kubectl, lease_holder, release_pods, scrape_operator_metrics

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]


def test_operator_in_cluster_reconciles_upgrades_and_uninstalls(
    cluster: Any, namespace: str, in_cluster: str, jobs: Jobs
) -> None:
    release, kc = in_cluster, cluster.kubeconfig
    fullname = f"{release}-finetune-operator"
    pods = release_pods(cluster, namespace, release)
    assert len(pods) == 2  # the chart's default: two replicas, one of them leads
    for pod in pods:
        assert pod.status.phase == "Running" and not pod.spec.node_name.startswith("kwok-")
        assert pod.status.container_statuses[0].restart_count == 0
    names = {pod.metadata.name for pod in pods}
    leader = wait_for("a leader among the replicas", lambda: lease_holder(cluster, namespace, fullname) or None)
    assert leader in names

    jobs.create(
        namespace,
        ftj_manifest("incluster", podMetadata={"annotations": kwok_annotations(0, success_message(), delay="1s")}),
    )
    jobs.wait_phase(namespace, "incluster", "Succeeded", timeout=120)

    # the leader's: the standby reconciles nothing
    metrics = scrape_operator_metrics(cluster, namespace, f"pod/{leader}")
    assert 'finetune_operator_finetunejobs{phase="Succeeded"} 1.0' in metrics
    # the CPU-only data check (the chart's default) as the operator's own pod, then the training Job
    assert 'finetune_operator_child_create_seconds_count{kind="Pod"} 1.0' in metrics
    assert 'finetune_operator_child_create_seconds_count{kind="Job"} 1.0' in metrics
    logs = kubectl("logs", "-n", namespace, f"pod/{leader}", kubeconfig=kc).stdout.splitlines()
    assert logs and all(json.loads(line)["message"] is not None for line in logs)  # logFormat=json
    # an HTTP 403 or a Forbidden from the API server: missing RBAC (a timestamp's ".403733" is not one)
    refused = re.compile(r"(?<![\d.])403(?!\d)|forbidden", re.IGNORECASE)
    assert not [line for line in logs if refused.search(line)]

    helm(
        "upgrade",
        release,
        str(CHART),
        "-n",
        namespace,
        "--reuse-values",
        "--set",
        "reconcile.threads=2",
        "--wait",
        "--timeout",
        "3m",
        kubeconfig=kc,
    )
    new_pods = wait_for(
        "two new operator pods, none of the old ones",
        lambda: (
            (
                (found := release_pods(cluster, namespace, release))
                and len(found) == 2
                and not names & {p.metadata.name for p in found}
                and found
            )
            or None
        ),
        timeout=120,
    )
    for new_pod in new_pods:
        env = {e.name: e.value for e in new_pod.spec.containers[0].env}
        assert env["FTO_RECONCILE_THREADS"] == "2" and env["FTO_LOG_FORMAT"] == "json"
    wait_for("the Lease handed to a new pod", lambda: lease_holder(cluster, namespace, fullname) not in names or None)
    jobs.create(
        namespace,
        ftj_manifest("after-upgrade", podMetadata={"annotations": kwok_annotations(0, success_message(), delay="1s")}),
    )
    jobs.wait_phase(namespace, "after-upgrade", "Succeeded", timeout=120)

    helm("uninstall", release, "-n", namespace, "--wait", kubeconfig=kc)
    wait_for("the operator pod gone", lambda: not release_pods(cluster, namespace, release), timeout=60)
    assert {
        j["metadata"]["name"]
        for j in cluster.custom.list_namespaced_custom_object("finetune.dev", "v1alpha1", namespace, "finetunejobs")[
            "items"
        ]
    } == {"incluster", "after-upgrade"}
    assert jobs.status(namespace, "incluster")["phase"] == "Succeeded"
