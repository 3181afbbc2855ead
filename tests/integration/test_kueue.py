"""Kueue without Kueue: the API-level contract the operator keeps with Kueue, with the test playing Kueue.

Kueue admits a Job by setting `spec.suspend: false` and preempts it by setting it back to true; its webhook
requires a queued Job to be created suspended. So the operator must create the Job suspended with the queue
label, show Queued whenever Kueue holds it, and never write `spec.suspend` of a queued Job itself (a user's
`suspend: true` deletes the Job instead: tests/integration/test_control_loop.py). Ownership of the field is
read from managedFields, so a single write by the operator would show.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Jobs, Operator, ftj_manifest, success_message, wait_for
from .kueue_local import OPT_IN, LocalKueue

pytestmark = pytest.mark.cluster

KUEUE = "kueue-sim"  # the field manager this test writes suspend with, as Kueue's controller would
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def _suspend_owners(job: Any) -> set[str]:
    return {
        entry.manager
        for entry in job.metadata.managed_fields or []
        if "f:suspend" in (entry.fields_v1 or {}).get("f:spec", {})
    }


def _kueue_sets_suspend(jobs: Jobs, namespace: str, name: str, suspend: bool) -> None:
    jobs.cluster.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}}, field_manager=KUEUE)


def test_queued_admitted_preempted_readmitted_without_the_operator_touching_suspend(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("q", queueName="team-gpus"))
    queued = jobs.wait_phase(namespace, "q", "Queued")
    trained = {c["type"]: c for c in queued["conditions"]}["Trained"]
    assert "Kueue" in trained["message"]
    (job,) = jobs.training_jobs(namespace, "q")
    assert job.metadata.labels[QUEUE_LABEL] == "team-gpus" and job.spec.suspend is True  # as Kueue's webhook wants
    assert not jobs.pods(namespace, job.metadata.name)
    name = job.metadata.name

    _kueue_sets_suspend(jobs, namespace, name, False)  # admitted
    jobs.running_pod(namespace, name)
    jobs.wait_phase(namespace, "q", "Training")

    _kueue_sets_suspend(jobs, namespace, name, True)  # preempted by a higher-priority workload
    jobs.wait_phase(namespace, "q", "Queued")
    wait_for("the pods gone", lambda: not [p for p in jobs.pods(namespace, name) if p.status.phase == "Running"])
    # Not a pause but a positive sign that the operator has worked through the preemption: an edit made after
    # the pods were gone that changes no child (the gate only judges a finished run) raises the generation, and
    # status.observedGeneration shows it once a pass has read it. That pass came after the Job's and the pods'
    # events, and by then the operator must have left suspend alone.
    jobs.patch_spec(namespace, "q", {"evaluation": {"gate": [{"metric": "test_loss", "max": 2.0}]}})
    edited = jobs.get(namespace, "q")["metadata"]["generation"]
    wait_for("the gate edit observed", lambda: jobs.status(namespace, "q").get("observedGeneration") == edited)
    job = jobs.cluster.batch.read_namespaced_job(name, namespace)
    assert job.spec.suspend is True and _suspend_owners(job) == {KUEUE}
    assert jobs.status(namespace, "q")["phase"] == "Queued"

    _kueue_sets_suspend(jobs, namespace, name, False)  # admitted again
    pod = jobs.running_pod(namespace, name)
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    done = jobs.wait_phase(namespace, "q", "Succeeded")
    assert done["run"] == 1 and [j.metadata.name for j in jobs.training_jobs(namespace, "q")] == [name]
    assert done["gate"]["passed"] is True  # the edit was a gate change only: judged, never retrained
    assert _suspend_owners(jobs.cluster.batch.read_namespaced_job(name, namespace)) == {KUEUE}


def test_queue_name_change_moves_the_job_without_a_new_run(operator: Operator, jobs: Jobs, namespace: str) -> None:
    """Moving a job to another LocalQueue is a placement change: run 1's Job is replaced by one labelled
    for the new queue (nothing had started; a running one would resume from its checkpoint), no retraining."""
    jobs.create(namespace, ftj_manifest("move", queueName="small"))
    jobs.wait_phase(namespace, "move", "Queued")
    (job,) = jobs.training_jobs(namespace, "move")
    assert job.metadata.labels[QUEUE_LABEL] == "small"
    jobs.patch_spec(namespace, "move", {"queueName": "large"})
    moved = wait_for(
        "a Job in queue large",
        lambda: next(
            (j for j in jobs.training_jobs(namespace, "move") if j.metadata.labels[QUEUE_LABEL] == "large"), None
        ),
    )
    assert moved.metadata.name == job.metadata.name and moved.spec.suspend is True
    status = jobs.wait_phase(namespace, "move", "Queued")
    assert status["run"] == 1 and status["observedGeneration"] == 2
    assert len(jobs.training_jobs(namespace, "move")) == 1


# --- with the real Kueue (v0.17.0, built from the Go module proxy, run as a local process) ---

KUEUE_API = ("kueue.x-k8s.io", "v1beta2")
GPU_JOB = {
    "gpus": 8,
    "memory": "1Gi",
    "cpu": "1",
    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    "nodeSelector": {"type": "kwok"},
}


@pytest.fixture
def kueue(cluster: Any, tmp_path: Path) -> Iterator[LocalKueue]:
    local = LocalKueue(cluster.kubeconfig, tmp_path / "kueue")
    local.folder.mkdir()
    try:
        yield local.start()
    finally:
        local.stop()


@pytest.fixture
def gpu_queue(cluster: Any, namespace: str, kueue: LocalKueue) -> Iterator[str]:
    """LocalQueue `gpus` in the namespace -> a ClusterQueue with a nominal quota of 8 GPUs."""
    group, version = KUEUE_API
    custom = cluster.custom
    cluster.core.patch_namespace(namespace, {"metadata": {"labels": {OPT_IN: "true"}}})
    flavor, queue = f"{namespace}-gpu", f"{namespace}-cq"
    custom.create_cluster_custom_object(
        group,
        version,
        "resourceflavors",
        {"apiVersion": f"{group}/{version}", "kind": "ResourceFlavor", "metadata": {"name": flavor}},
    )
    custom.create_cluster_custom_object(
        group,
        version,
        "clusterqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "ClusterQueue",
            "metadata": {"name": queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": flavor,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "64"},
                                    {"name": "memory", "nominalQuota": "512Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "8"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    custom.create_namespaced_custom_object(
        group,
        version,
        namespace,
        "localqueues",
        {
            "apiVersion": f"{group}/{version}",
            "kind": "LocalQueue",
            "metadata": {"name": "gpus"},
            "spec": {"clusterQueue": queue},
        },
    )
    try:
        yield "gpus"
    finally:
        # While Kueue still runs: its finalizers on Workloads and queues must be released, or the namespace
        # and the cluster-scoped queue objects would hang in deletion after it stops.
        cluster.batch.delete_collection_namespaced_job(namespace, propagation_policy="Background")
        wait_for(
            "the Workloads gone",
            lambda: not custom.list_namespaced_custom_object(group, version, namespace, "workloads")["items"],
            timeout=60,
        )
        custom.delete_namespaced_custom_object(group, version, namespace, "localqueues", "gpus")
        custom.delete_cluster_custom_object(group, version, "clusterqueues", queue)
        custom.delete_cluster_custom_object(group, version, "resourceflavors", flavor)
        wait_for(
            "the ClusterQueue gone",
            lambda: (
                queue
                not in [
                    q["metadata"]["name"]
                    for q in custom.list_cluster_custom_object(group, version, "clusterqueues")["items"]
                ]
            ),
            timeout=60,
        )


def _workload_conditions(jobs: Jobs, namespace: str, job_name: str) -> dict[str, dict[str, Any]] | None:
    """The conditions of the Workload Kueue made for Job `job_name`, by type (None: no Workload yet)."""
    group, version = KUEUE_API
    for workload in jobs.cluster.custom.list_namespaced_custom_object(group, version, namespace, "workloads")["items"]:
        owners = [o["name"] for o in workload["metadata"].get("ownerReferences", [])]
        if job_name in owners:
            return {c["type"]: c for c in workload.get("status", {}).get("conditions", [])}
    return None


def _workload_admitted(jobs: Jobs, namespace: str, job_name: str) -> bool | None:
    conditions = _workload_conditions(jobs, namespace, job_name)
    if conditions is None:
        return None
    return conditions.get("Admitted", {}).get("status") == "True"


def _held_for_quota(jobs: Jobs, namespace: str, job_name: str) -> str | None:
    """Kueue's scheduler's verdict when it tried the Workload and found the quota used up: the message of its
    QuotaReserved=False condition ("couldn't assign flavors to pod set main: insufficient unused quota for
    nvidia.com/gpu in flavor ..., 8 more needed"); None until the scheduler has tried."""
    reserved = (_workload_conditions(jobs, namespace, job_name) or {}).get("QuotaReserved", {})
    message = str(reserved.get("message", ""))
    return message if reserved.get("status") == "False" and "insufficient unused quota" in message else None


@pytest.mark.timeout(3600)  # a cold cache builds Kueue first (`go install`, minutes on 2 cores)
def test_real_kueue_admits_one_8_gpu_job_and_queues_the_next(
    gpu_queue: str, operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("first", queueName=gpu_queue, resources=GPU_JOB))
    jobs.wait_phase(namespace, "first", "Training", timeout=90)  # Kueue admitted it: it unsuspended the Job
    (first,) = jobs.training_jobs(namespace, "first")
    assert _workload_admitted(jobs, namespace, first.metadata.name) is True

    jobs.create(namespace, ftj_manifest("second", queueName=gpu_queue, resources=GPU_JOB))
    queued = jobs.wait_phase(namespace, "second", "Queued")
    (second,) = jobs.training_jobs(namespace, "second")
    # Not a pause: Kueue's scheduler has tried the second Workload and says why it waits. Quota is the only thing
    # in the way (both nodes have 8 free GPUs each), and the operator must not have started it regardless.
    held = wait_for(
        "Kueue's scheduler to hold the second Workload for quota",
        lambda: _held_for_quota(jobs, namespace, second.metadata.name),
        timeout=90,
    )
    assert "nvidia.com/gpu" in held, held
    assert _workload_admitted(jobs, namespace, second.metadata.name) is False
    assert jobs.status(namespace, "second")["phase"] == "Queued"
    assert jobs.cluster.batch.read_namespaced_job(second.metadata.name, namespace).spec.suspend is True
    assert "Kueue" in {c["type"]: c for c in queued["conditions"]}["Trained"]["message"]

    # A placement change to the queued job replaces its Job (foreground deletion: Kueue must release the
    # Workload for the old Job to go); the replacement queues again, for the same run.
    jobs.patch_spec(namespace, "second", {"resources": {"memory": "2Gi"}})
    second = wait_for(
        "the second Job replaced",
        lambda: next(
            (j for j in jobs.training_jobs(namespace, "second") if j.metadata.uid != second.metadata.uid), None
        ),
        timeout=60,
    )
    assert second.spec.template.spec.containers[0].resources.limits["memory"] == "2Gi"
    wait_for("the new Workload", lambda: _workload_admitted(jobs, namespace, second.metadata.name) is False)
    assert jobs.wait_phase(namespace, "second", "Queued")["run"] == 1

    pod = jobs.running_pod(namespace, first.metadata.name)
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    jobs.wait_phase(namespace, "first", "Succeeded")
    jobs.wait_phase(namespace, "second", "Training", timeout=90)  # the quota came back: Kueue admits it
    for job in (first, second):
        owners = _suspend_owners(jobs.cluster.batch.read_namespaced_job(job.metadata.name, namespace))
        assert "finetune-operator" not in owners, owners  # Kueue wrote suspend last, never the operator
