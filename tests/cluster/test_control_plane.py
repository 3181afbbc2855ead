"""The local cluster is a real Kubernetes: RBAC, Job controller, scheduler, kwok pod scripting, GC.

Each test talks to the API server through the official client, exactly as the operator will.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from tests.conftest import Cluster
from tests.support.kwok import KWOK_TOLERATION, kwok_pod_spec
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def job_condition(job: Any, kind: str) -> Any | None:
    """The Job condition of type `kind` when its status is True, else None."""
    for condition in job.status.conditions or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def create_job(cluster: Cluster, namespace: str, name: str, template: dict[str, Any], **spec: Any) -> None:
    body = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": template, **spec},
    }
    cluster.batch.create_namespaced_job(namespace, body)


def job_pods(cluster: Cluster, namespace: str, name: str) -> list[Any]:
    return list(cluster.core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items)


def test_rbac_denies_a_service_account_without_a_role_and_allows_it_with_one(cluster: Cluster, namespace: str) -> None:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    token = cluster.core.create_namespaced_service_account_token(
        "reader", namespace, {"spec": {"expirationSeconds": 600}}
    ).status.token
    config = client.Configuration()
    config.host = cluster.api_client.configuration.host
    config.ssl_ca_cert = cluster.api_client.configuration.ssl_ca_cert
    config.api_key = {"authorization": f"Bearer {token}"}
    as_reader = client.CoreV1Api(client.ApiClient(config))

    with pytest.raises(client.ApiException) as denied:
        as_reader.list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{namespace}:reader" in str(denied.value.body)

    cluster.rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "read-configmaps"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    cluster.rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader-reads-configmaps"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "read-configmaps"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )

    def allowed() -> bool:
        try:
            as_reader.list_namespaced_config_map(namespace)
            return True
        except client.ApiException as error:
            assert error.status == 403
            return False

    wait_for("the RoleBinding to take effect", allowed, timeout=20)
    with pytest.raises(client.ApiException) as still_denied:
        as_reader.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403


def test_job_controller_makes_pods_and_counts_their_success(cluster: Cluster, namespace: str) -> None:
    create_job(cluster, namespace, "two", kwok_pod_spec(exit_code=0), completions=2, parallelism=2)
    job = wait_for(
        "Job 'two' to complete",
        lambda: (lambda j: j if job_condition(j, "Complete") else None)(
            cluster.batch.read_namespaced_job_status("two", namespace)
        ),
    )
    assert job.status.succeeded == 2
    pods = job_pods(cluster, namespace, "two")
    assert len(pods) == 2
    assert all(p.spec.node_name and p.spec.node_name.startswith("kwok-gpu-") for p in pods)


def test_scheduler_places_gpu_pods_on_gpu_nodes_and_leaves_oversized_ones_pending(
    cluster: Cluster, namespace: str
) -> None:
    def gpu_pod(name: str, gpus: int) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {
                "tolerations": [KWOK_TOLERATION],
                "containers": [
                    {
                        "name": "c",
                        "image": "fake.local/x:v1",
                        "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                    }
                ],
            },
        }

    nodes = cluster.core.list_node(label_selector="type=kwok").items
    most_gpus = max(int(n.status.allocatable.get("nvidia.com/gpu", "0")) for n in nodes)
    assert most_gpus >= 1, "the kwok nodes carry no nvidia.com/gpu capacity"
    cluster.core.create_namespaced_pod(namespace, gpu_pod("fits", most_gpus))
    cluster.core.create_namespaced_pod(namespace, gpu_pod("too-big", most_gpus + 1))

    placed = wait_for(
        "the scheduler to place the GPU pod", lambda: cluster.core.read_namespaced_pod("fits", namespace).spec.node_name
    )
    node = cluster.core.read_node(placed)
    assert int(node.status.allocatable["nvidia.com/gpu"]) >= most_gpus
    wait_for(
        "kwok to run the GPU pod", lambda: cluster.core.read_namespaced_pod("fits", namespace).status.phase == "Running"
    )

    def failed_scheduling() -> Any:
        events = cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=too-big,reason=FailedScheduling"
        ).items
        return events[0] if events else None

    event = wait_for("a FailedScheduling event for the oversized pod", failed_scheduling)
    assert "nvidia.com/gpu" in event.message
    too_big = cluster.core.read_namespaced_pod("too-big", namespace)
    assert too_big.status.phase == "Pending" and not too_big.spec.node_name


def test_kwok_fails_pods_as_annotated_and_the_job_counts_retries(cluster: Cluster, namespace: str) -> None:
    create_job(
        cluster,
        namespace,
        "flaky",
        kwok_pod_spec(exit_code=1, message="CUDA error", delay="200ms"),
        backoffLimit=2,
    )
    job = wait_for(
        "Job 'flaky' to exhaust its backoff limit",
        lambda: (lambda j: j if job_condition(j, "Failed") else None)(
            cluster.batch.read_namespaced_job_status("flaky", namespace)
        ),
        timeout=120,
    )
    failed = job_condition(job, "Failed")
    assert failed is not None and failed.reason == "BackoffLimitExceeded"
    assert job.status.failed == 3
    pods = job_pods(cluster, namespace, "flaky")
    terminated = pods[0].status.container_statuses[0].state.terminated
    assert terminated.exit_code == 1
    assert terminated.message == "CUDA error"


def test_pod_failure_policy_fails_the_job_at_once_on_the_user_error_exit_code(cluster: Cluster, namespace: str) -> None:
    policy = {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [42]},
            }
        ]
    }
    create_job(
        cluster,
        namespace,
        "bad-data",
        kwok_pod_spec(exit_code=42, message='{"code":"DatasetInvalid"}'),
        backoffLimit=5,
        podFailurePolicy=policy,
    )
    job = wait_for(
        "Job 'bad-data' to fail",
        lambda: (lambda j: j if job_condition(j, "Failed") else None)(
            cluster.batch.read_namespaced_job_status("bad-data", namespace)
        ),
    )
    failed = job_condition(job, "Failed")
    assert failed is not None and failed.reason == "PodFailurePolicy"
    assert len(job_pods(cluster, namespace, "bad-data")) == 1


def test_a_disrupted_pod_does_not_use_up_a_retry(cluster: Cluster, namespace: str) -> None:
    policy = {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}
    create_job(
        cluster,
        namespace,
        "preempted",
        kwok_pod_spec(exit_code=None),
        backoffLimit=0,
        podFailurePolicy=policy,
    )
    first = wait_for(
        "the first pod to run",
        lambda: [p for p in job_pods(cluster, namespace, "preempted") if p.status.phase == "Running"],
    )[0]
    cluster.core.create_namespaced_pod_eviction(
        first.metadata.name,
        namespace,
        {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": first.metadata.name, "namespace": namespace},
        },
    )

    def replacement() -> Any:
        pods = [
            p
            for p in job_pods(cluster, namespace, "preempted")
            if p.metadata.name != first.metadata.name and p.status.phase == "Running"
        ]
        return pods[0] if pods else None

    wait_for("a replacement pod after the eviction", replacement, timeout=60)
    job = cluster.batch.read_namespaced_job_status("preempted", namespace)
    assert not job_condition(job, "Failed"), "an evicted pod must not count against backoffLimit=0"
    assert not job.status.failed


def test_deleting_an_owner_garbage_collects_its_children(cluster: Cluster, namespace: str) -> None:
    owner = cluster.core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    cluster.core.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": "child",
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
                ],
            }
        },
    )
    create_job(cluster, namespace, "runner", kwok_pod_spec(exit_code=None))
    wait_for("the Job's pod", lambda: job_pods(cluster, namespace, "runner"))

    cluster.core.delete_namespaced_config_map("owner", namespace)
    cluster.batch.delete_namespaced_job("runner", namespace, propagation_policy="Background")

    def gone() -> bool:
        names = {c.metadata.name for c in cluster.core.list_namespaced_config_map(namespace).items}
        return "child" not in names and not job_pods(cluster, namespace, "runner")

    wait_for("the garbage collector to remove the children", gone, timeout=60)
