"""A kwok GPU node that stops responding under a running training pod, and what the run does about it.

The fault: the node loses its kwok annotation and kwok is restarted, so nothing renews the node's Lease or
status any more (what a dead kubelet looks like to the control plane); the node lifecycle controller marks it
NotReady/Unknown and taints it, the taint manager evicts the pod once its toleration runs out, and the pod stays
Terminating because no kubelet confirms it. The run must say so (status reason NodeLost). Then the node is
deleted, as a cloud's node controller does when the machine is gone, and the Job must replace the pod on the
other node. Two fake nodes of the scenario's own (label `finetune.dev/chaos`) keep every other pod out of it.
Shared by tests/integration/test_chaos_node.py and `bench/chaos.py`.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from tests.support import burst
from tests.support.chaos import Components
from tests.support.waiting import wait_for

LABEL = "finetune.dev/chaos"
CAPACITY = {"cpu": "64", "memory": "512Gi", "ephemeral-storage": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
# how long the pods tolerate an unreachable node before they are evicted (Kubernetes adds 300 s by default)
TOLERATION_SECONDS = 5


@contextlib.contextmanager
def two_nodes(core: Any) -> Iterator[tuple[str, list[str]]]:
    key = uuid.uuid4().hex[:6]
    names = [f"chaos-{key}-{side}" for side in ("a", "b")]
    for name in names:
        core.create_node(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {LABEL: key, "kubernetes.io/hostname": name},
                },
                "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
                "status": {"allocatable": CAPACITY, "capacity": CAPACITY},
            }
        )
    try:
        yield key, names
    finally:
        for name in names:
            with contextlib.suppress(Exception):
                core.delete_node(name)


def manifest(name: str, key: str) -> dict[str, Any]:
    """A FineTuneJob whose pod runs (and never ends) on the scenario's nodes and leaves a lost node soon."""
    body = burst.manifest(name, "1s")
    body["spec"]["podMetadata"] = {"annotations": {}}  # no scripted exit: a long training run
    resources = body["spec"]["resources"]
    resources["nodeSelector"] = {LABEL: key}
    resources["tolerations"] += [
        {"key": f"node.kubernetes.io/{taint}", "operator": "Exists", "effect": "NoExecute",
         "tolerationSeconds": TOLERATION_SECONDS}
        for taint in ("unreachable", "not-ready")
    ]  # fmt: skip
    return body


def _pods(core: Any, namespace: str) -> list[Any]:
    return list(core.list_namespaced_pod(namespace, label_selector=burst.LABEL_UID).items)


def _status(custom: Any, namespace: str, name: str) -> dict[str, Any]:
    found = custom.get_namespaced_custom_object(burst.GROUP, burst.VERSION, namespace, burst.PLURAL, name)
    return dict(found.get("status") or {})


def lose_node(core: Any, custom: Any, namespace: str, components: Components, timeout: float = 300) -> dict[str, Any]:
    """Run the scenario on a namespace the operator watches; returns the figures (seconds from the fault)."""
    with two_nodes(core) as (key, nodes):
        custom.create_namespaced_custom_object(
            burst.GROUP, burst.VERSION, namespace, burst.PLURAL, manifest("lost", key)
        )
        first = wait_for(
            "the training pod to run",
            lambda: next((p for p in _pods(core, namespace) if p.status.phase == "Running"), None),
            timeout=120,
        )
        victim = first.spec.node_name
        wait_for("phase Training", lambda: _status(custom, namespace, "lost").get("phase") == "Training", timeout=60)
        core.patch_node(victim, {"metadata": {"annotations": {"kwok.x-k8s.io/node": None}}})
        fault = time.monotonic()
        components.restart("kwok")  # kwok lets go of the node: nothing heartbeats it any more

        def ready(node: str) -> str:
            conditions = core.read_node(node).status.conditions or []
            return next((c.status for c in conditions if c.type == "Ready"), "")

        wait_for(f"{victim} to be NotReady", lambda: ready(victim) != "True", timeout=timeout, interval=1)
        not_ready = time.monotonic() - fault
        said_so = wait_for(
            "the run to say NodeLost",
            lambda: next(
                (c for c in _status(custom, namespace, "lost").get("conditions", []) if c.get("reason") == "NodeLost"),
                None,
            ),
            timeout=timeout,
            interval=1,
        )
        said = time.monotonic() - fault
        replaced_before_deletion = [
            p.metadata.name for p in _pods(core, namespace) if p.metadata.name != first.metadata.name
        ]
        core.delete_node(victim)  # the machine is gone: a cloud's node controller deletes its Node
        deleted = time.monotonic()
        replacement = wait_for(
            "a replacement pod running on the other node",
            lambda: next(
                (p for p in _pods(core, namespace) if p.metadata.name != first.metadata.name
                 and p.status.phase == "Running" and p.spec.node_name != victim),
                None,
            ),
            timeout=timeout,
            interval=1,
        )  # fmt: skip
        recovered = time.monotonic()
        wait_for("phase Training again", lambda: _status(custom, namespace, "lost").get("phase") == "Training", 60)
        return {
            "node": victim,
            "replacement_node": replacement.spec.node_name,
            "toleration_seconds": TOLERATION_SECONDS,
            "not_ready_after_seconds": round(not_ready, 1),
            "run_said_node_lost_after_seconds": round(said, 1),
            "node_lost_condition": f"{said_so.get('type')}={said_so.get('status')}: NodeLost",
            "node_lost_message": said_so.get("message", ""),
            "replaced_before_the_node_was_deleted": replaced_before_deletion,
            "replacement_running_after_node_deleted_seconds": round(recovered - deleted, 1),
            "recovered_after_fault_seconds": round(recovered - fault, 1),
            "_nodes": nodes,
        }
