"""Kueue without Kueue: the API-level contract the operator keeps with Kueue, with the test playing Kueue.

Kueue admits a Job by setting `spec.suspend: false` and preempts it by setting it back to true; its webhook
requires a queued Job to be created suspended. So the operator must create the Job suspended with the queue
label, show Queued whenever Kueue holds it, and never write `spec.suspend` of a queued Job itself (a user's
`suspend: true` deletes the Job instead: tests/integration/test_control_loop.py). Ownership of the field is
read from managedFields, so a single write by the operator would show.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .conftest import Jobs, Operator, ftj_manifest, success_message, wait_for

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
    jobs.cluster.batch.patch_namespaced_job(
        name, namespace, {"spec": {"suspend": suspend}}, field_manager=KUEUE
    )


def test_queued_admitted_preempted_readmitted_without_the_operator_touching_suspend(
    operator: Operator, jobs: Jobs, namespace: str
) -> None:
    jobs.create(namespace, ftj_manifest("q", queueName="team-gpus"))
    queued = jobs.wait_phase(namespace, "q", "Queued")
    trained = {c["type"]: c for c in queued["conditions"]}["Trained"]
    assert "Kueue" in trained["message"]
    (job,) = jobs.training_jobs(namespace, "q")
    assert (
        job.metadata.labels[QUEUE_LABEL] == "team-gpus" and job.spec.suspend is True
    )  # as Kueue's webhook wants
    assert not jobs.pods(namespace, job.metadata.name)
    name = job.metadata.name

    _kueue_sets_suspend(jobs, namespace, name, False)  # admitted
    jobs.running_pod(namespace, name)
    jobs.wait_phase(namespace, "q", "Training")

    _kueue_sets_suspend(jobs, namespace, name, True)  # preempted by a higher-priority workload
    jobs.wait_phase(namespace, "q", "Queued")
    wait_for(
        "the pods gone", lambda: not [p for p in jobs.pods(namespace, name) if p.status.phase == "Running"]
    )
    time.sleep(3)  # the operator has seen the Job and pod events; it must leave suspend alone
    job = jobs.cluster.batch.read_namespaced_job(name, namespace)
    assert job.spec.suspend is True and _suspend_owners(job) == {KUEUE}
    assert jobs.status(namespace, "q")["phase"] == "Queued"

    _kueue_sets_suspend(jobs, namespace, name, False)  # admitted again
    pod = jobs.running_pod(namespace, name)
    jobs.finish_pod(namespace, pod.metadata.name, 0, success_message())
    done = jobs.wait_phase(namespace, "q", "Succeeded")
    assert done["run"] == 1 and [j.metadata.name for j in jobs.training_jobs(namespace, "q")] == [name]
    assert _suspend_owners(jobs.cluster.batch.read_namespaced_job(name, namespace)) == {KUEUE}


def test_queue_name_change_is_not_a_new_run(operator: Operator, jobs: Jobs, namespace: str) -> None:
    """Moving a queued job to another LocalQueue is Kueue's business: no retraining, the Job stays."""
    jobs.create(namespace, ftj_manifest("move", queueName="small"))
    jobs.wait_phase(namespace, "move", "Queued")
    (job,) = jobs.training_jobs(namespace, "move")
    jobs.patch_spec(namespace, "move", {"queueName": "large"})
    wait_for("generation 2 observed", lambda: jobs.status(namespace, "move").get("observedGeneration") == 2)
    status = jobs.status(namespace, "move")
    assert status["run"] == 1 and status["phase"] == "Queued"
    assert [j.metadata.uid for j in jobs.training_jobs(namespace, "move")] == [job.metadata.uid]
