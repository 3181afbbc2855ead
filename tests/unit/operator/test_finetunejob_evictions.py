"""Node-pressure evictions of a run's pods, without a cluster: each is counted in status.evictions with its node
and resource and announced by an Event, none is counted twice across passes, and at the limit the run fails
EvictedRepeatedly naming the nodes, its Job is deleted, and the failure stands; a retry's new Job counts anew."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from finetune_operator.api.finetunejob import placement_spec_hash, training_spec_hash
from finetune_operator.core.observed import JobObs, PodObs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.evictions import counted, node_pressure_evicted, pressure_resource
from finetune_operator.finetunejob.plan import Plan, Snapshot, plan

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", validation=False, node_pressure_evictions=3)
DISK = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 9Gi. "
MEMORY = "The node was low on resource: memory. Threshold quantity: 100Mi, available: 90Mi. "
OWN_LIMIT = "Pod ephemeral local storage usage exceeds the total limit of containers 8Gi. "


def _job(uid: str = "job-uid", **kw: Any) -> JobObs:
    defaults = {
        "placement_hash": placement_spec_hash(spec()),
        "training_hash": training_spec_hash(spec()),
        "active": 1,
    }
    return JobObs("support-bot-r1", 1, uid=uid, **{**defaults, **kw})


def _evicted(i: int, message: str = DISK, node: str = "gpu-1", job_uid: str = "job-uid") -> PodObs:
    return PodObs(
        f"support-bot-r1-p{i}",
        1,
        phase="Failed",
        disrupted=True,
        eviction=message,
        node=node,
        created=f"t{i}",
        job_uid=job_uid,
    )


def _snapshot(pods: list[PodObs], status: dict[str, Any], jobs: list[JobObs] | None = None, **kw: Any) -> Snapshot:
    return Snapshot(
        owner=OWNER,
        generation=1,
        spec=spec(),
        status=status,
        now="t",
        jobs=[_job()] if jobs is None else jobs,
        pods=pods,
        **kw,
    )


def _first_status() -> dict[str, Any]:
    first = plan(Snapshot(owner=OWNER, generation=1, spec=spec(), status={}, now="t", secret_present=True), SETTINGS)
    return {**first.status, "validation": {"key": "k", "run": 1, "passed": True}}


def _job_deletes(decided: Plan) -> list[tuple[str, str]]:
    return [(d.name, d.uid) for d in decided.delete if d.kind == "Job"]


def test_the_node_and_the_resource_are_read_from_the_pod() -> None:
    body = {
        "metadata": {"name": "p"},
        "spec": {"nodeName": "gpu-7"},
        "status": {"phase": "Failed", "reason": "Evicted", "message": DISK},
    }
    assert pod_obs(body).node == "gpu-7" and pod_obs(body).eviction == DISK
    assert pressure_resource(DISK) == "ephemeral-storage" and pressure_resource(MEMORY) == "memory"
    assert pressure_resource("The node was low on resource: cats. ") == "unknown"  # no new metric label values
    mine, others = _evicted(1), _evicted(2, job_uid="older-job")
    assert node_pressure_evicted([mine, others, _evicted(3, OWN_LIMIT)], "job-uid") == [mine]


def test_each_eviction_is_counted_once_with_an_event_then_the_run_fails_at_the_limit() -> None:
    status = _first_status()
    replacement = PodObs("support-bot-r1-live", 1, phase="Running", created="t9", job_uid="job-uid", node="gpu-3")
    one = plan(_snapshot([_evicted(1), replacement], status), SETTINGS)
    record = one.status["evictions"]
    assert record["count"] == 1 and record["nodes"] == ["gpu-1"] and record["jobUid"] == "job-uid"
    assert record["last"]["resource"] == "ephemeral-storage" and "Threshold quantity: 10Gi" in record["last"]["message"]
    assert one.status["phase"] != "Failed" and not _job_deletes(one)
    (event,) = [e for e in one.events if e.reason == "NodePressureEviction"]
    assert event.type == "Warning" and "support-bot-r1-p1" in event.message and "gpu-1" in event.message
    assert "1 of 3" in event.message and one.evicted == ("ephemeral-storage",)

    # the same pod seen again: not counted again, no new event
    again = plan(_snapshot([_evicted(1), replacement], one.status), SETTINGS)
    assert again.status["evictions"]["count"] == 1 and again.evicted == ()
    assert not [e for e in again.events if e.reason == "NodePressureEviction"]

    # two more (another node, memory): the third reaches the limit
    pods = [_evicted(1), _evicted(2, MEMORY, "gpu-2"), _evicted(3, DISK, "gpu-2")]
    failed = plan(_snapshot(pods, again.status), SETTINGS)
    error = failed.status["error"]
    assert failed.status["phase"] == "Failed" and error["code"] == "EvictedRepeatedly"
    assert "evicted 3 times" in error["message"] and "gpu-1, gpu-2" in error["message"]
    assert "ephemeral-storage, memory" in error["message"] and "finetune.dev/retry" in error["message"]
    assert _job_deletes(failed) == [("support-bot-r1", "job-uid")] and failed.evicted == ("memory", "ephemeral-storage")
    assert [e.message.split("(")[1][:6] for e in failed.events if e.reason == "NodePressureEviction"] == [
        "2 of 3",
        "3 of 3",
    ]

    # the Job is being deleted, then gone: the failure and the count stand, nothing is made again
    deleting = plan(_snapshot(pods, failed.status, jobs=[_job(deleting=True)]), SETTINGS)
    assert deleting.status["error"]["code"] == "EvictedRepeatedly" and not _job_deletes(deleting)
    gone = plan(_snapshot([], failed.status, jobs=[]), SETTINGS)
    assert gone.status["phase"] == "Failed" and gone.status["error"]["code"] == "EvictedRepeatedly"
    assert gone.status["evictions"]["count"] == 3 and not [m for m in gone.create if m["kind"] == "Job"]


def test_a_retry_makes_a_new_job_whose_evictions_count_from_zero() -> None:
    status = {**_first_status(), "evictions": counted(1, _job(), [_evicted(1), _evicted(2)], None).record}
    fresh = counted(1, _job("new-job"), [_evicted(3, job_uid="new-job")], status["evictions"])
    assert fresh.record is not None and fresh.count == 1 and fresh.record["jobUid"] == "new-job"
    retried = plan(_snapshot([_evicted(3, job_uid="new-job")], status, jobs=[_job("new-job")]), SETTINGS)
    assert retried.status["evictions"]["count"] == 1 and retried.status["phase"] != "Failed"


def test_an_own_limit_eviction_is_not_counted_here_and_a_finished_job_is_not_failed() -> None:
    status = _first_status()
    own = plan(_snapshot([_evicted(1, OWN_LIMIT)], status), SETTINGS)
    assert own.status["error"]["code"] == "DiskLimitExceeded" and own.status.get("evictions") is None
    done = _job(active=0, succeeded=1, complete=True)
    result = json.dumps({"code": "Succeeded", "message": "trained", "run": 1, "metrics": {"test": {"loss": 1.0}}})
    trained = PodObs("support-bot-r1-ok", 1, phase="Succeeded", exit_code=0, termination_message=result, created="t9")
    pods = [_evicted(i) for i in range(1, 4)] + [dataclasses.replace(trained, job_uid="job-uid")]
    finished = plan(_snapshot(pods, status, jobs=[done]), SETTINGS)
    assert finished.status["evictions"]["count"] == 3 and finished.status.get("error") is None
    assert not _job_deletes(finished)


def test_the_limit_is_a_setting() -> None:
    status = _first_status()
    pods = [_evicted(i) for i in range(1, 4)]
    assert plan(_snapshot(pods, status), SETTINGS).status["phase"] == "Failed"
    assert plan(_snapshot(pods, status), dataclasses.replace(SETTINGS, node_pressure_evictions=5)).status[
        "phase"
    ] not in ("Failed",)
