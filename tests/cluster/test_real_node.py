"""The local cluster's real node runs containers: kubelet + containerd + runc + CNI, as a cloud node would.

A busybox image (imported by `make cluster-up`) stands in for a workload: it runs as non-root, its logs come
back through the API server and the kubelet, and from its own network namespace it reaches the host services
a trainer needs, S3 and the API server (through the `kubernetes` Service address), via the bridge gateway.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.conftest import Cluster
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

BUSYBOX = "finetune.local/busybox:1.35"


@pytest.fixture
def real_node(cluster: Cluster) -> str:
    name = os.environ.get("FTO_NODE_NAME")
    if not name:
        raise RuntimeError("no real node: `make cluster-up` with FTO_REAL_NODE=1 (the default) starts one")
    node = cluster.core.read_node(name)
    ready = [c for c in node.status.conditions if c.type == "Ready"]
    assert ready and ready[0].status == "True", f"node {name} is not Ready"
    return name


def run_to_completion(cluster: Cluster, namespace: str, name: str, script: str) -> Any:
    """Run `script` in busybox on the real node as a non-root user; return the finished pod."""
    cluster.core.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {"finetune.dev/real-node": "true"},
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": 10001,
                    "runAsGroup": 10001,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [
                    {
                        "name": "main",
                        "image": BUSYBOX,
                        "imagePullPolicy": "Never",
                        "command": ["/bin/busybox", "sh", "-c", script],
                        "securityContext": {
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "readOnlyRootFilesystem": True,
                        },
                    }
                ],
            },
        },
    )

    def finished() -> Any:
        pod = cluster.core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None

    return wait_for(f"pod {name} to finish on the real node", finished, timeout=90)


def test_a_pod_runs_as_non_root_and_its_logs_are_readable(cluster: Cluster, namespace: str, real_node: str) -> None:
    pod = run_to_completion(cluster, namespace, "whoami", "/bin/busybox id -u; echo hello from the node")
    assert pod.spec.node_name == real_node
    assert pod.status.phase == "Succeeded", pod.status
    assert pod.status.pod_ip.startswith("10.88.")
    logs = cluster.core.read_namespaced_pod_log("whoami", namespace)
    assert logs.splitlines() == ["10001", "hello from the node"]


def test_a_pod_reaches_s3_and_the_api_server(cluster: Cluster, namespace: str, real_node: str) -> None:
    s3 = urlparse(os.environ["FTO_POD_S3_ENDPOINT"])
    script = (
        f"/bin/busybox nc -w 5 {s3.hostname} {s3.port} </dev/null && echo s3-reachable; "
        # the `kubernetes` Service address every in-cluster client uses
        "/bin/busybox nc -w 5 $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT </dev/null"
        " && echo api-reachable"
    )
    pod = run_to_completion(cluster, namespace, "reach", script)
    logs = cluster.core.read_namespaced_pod_log("reach", namespace)
    assert pod.status.phase == "Succeeded", logs
    assert logs.split() == ["s3-reachable", "api-reachable"]


def test_a_failing_container_reports_its_exit_code_and_termination_message(
    cluster: Cluster, namespace: str, real_node: str
) -> None:
    script = 'echo \'{"code": "DatasetInvalid"}\' > /dev/termination-log; exit 42'
    pod = run_to_completion(cluster, namespace, "user-error", script)
    assert pod.status.phase == "Failed"
    terminated = pod.status.container_statuses[0].state.terminated
    assert terminated.exit_code == 42
    assert terminated.message.strip() == '{"code": "DatasetInvalid"}'
