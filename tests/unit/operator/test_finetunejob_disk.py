"""A training pod evicted for its own disk limit, without a cluster: the run fails DiskLimitExceeded with the
disk plan and the fix, its Job is deleted so no identical replacement starts, and a larger ephemeralStorage runs it
again; an eviction for the node's disk pressure stays a free retry."""

from __future__ import annotations

from typing import Any

from finetune_operator.api.finetunejob import placement_spec_hash, training_spec_hash
from finetune_operator.core.observed import JobObs, PodObs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.disk import own_limit_eviction
from finetune_operator.finetunejob.plan import Snapshot, plan

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", validation=False)
GIB = 1024**3
DISK_PLAN = {
    "modelBytes": 2 * GIB,
    "dataBytes": GIB // 2,
    "checkpointBytes": GIB,
    "checkpointsAtOnce": 3,
    "outputBytes": GIB // 4,
    "totalBytes": 8 * GIB,
}
OWN_LIMIT = "Pod ephemeral local storage usage exceeds the total limit of containers 8Gi. "
NODE_PRESSURE = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 9Gi. "


def _running_job(**kw: Any) -> JobObs:
    defaults = {"placement_hash": placement_spec_hash(spec()), "training_hash": training_spec_hash(spec())}
    return JobObs("support-bot-r1", 1, uid="job-uid", active=1, failed=1, **{**defaults, **kw})


def _evicted(message: str, name: str = "support-bot-r1-abcde") -> PodObs:
    return PodObs(name, 1, phase="Failed", disrupted=True, eviction=message, created="t1")


def _snapshot(pods: list[PodObs], status: dict[str, Any] | None = None, **kw: Any) -> Snapshot:
    first = plan(Snapshot(owner=OWNER, generation=1, spec=spec(), status={}, now="t", secret_present=True), SETTINGS)
    base = {**first.status, "validation": {"key": "k", "run": 1, "passed": True, "diskPlan": DISK_PLAN}}
    return Snapshot(
        owner=OWNER,
        generation=1,
        spec=kw.pop("s", spec()),
        status=status if status is not None else base,
        now="t",
        jobs=kw.pop("jobs", [_running_job()]),
        pods=pods,
    )


def test_the_kubelets_eviction_message_is_read_from_the_pod() -> None:
    body = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted", "message": OWN_LIMIT}}
    assert pod_obs(body).eviction == OWN_LIMIT
    assert pod_obs({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Error"}}).eviction == ""
    assert own_limit_eviction([_evicted(NODE_PRESSURE)]) is None
    assert own_limit_eviction([_evicted(NODE_PRESSURE), _evicted(OWN_LIMIT, "b")]) is not None


def test_an_eviction_for_its_own_limit_fails_the_run_and_stops_its_job() -> None:
    replacement = PodObs("support-bot-r1-fghij", 1, phase="Running", created="t2")
    decided = plan(_snapshot([_evicted(OWN_LIMIT), replacement]), SETTINGS)
    error = decided.status["error"]
    assert decided.status["phase"] == "Failed" and error["code"] == "DiskLimitExceeded"
    assert "support-bot-r1-abcde" in error["message"] and "ephemeral-storage 8192Mi" in error["message"]
    assert "planned 8.0 GiB (model 2.0 GiB" in error["message"] and "3 checkpoints of 1.0 GiB" in error["message"]
    assert "resources.ephemeralStorage" in error["message"]
    assert [(d.kind, d.name, d.uid) for d in decided.delete if d.kind == "Job"] == [
        ("Job", "support-bot-r1", "job-uid")
    ]
    assert decided.create == []
    # the next pass, with the Job gone: the failure stands and nothing is created again
    after = plan(_snapshot([], status=decided.status, jobs=[]), SETTINGS)
    assert after.status["phase"] == "Failed" and after.status["error"]["code"] == "DiskLimitExceeded"
    assert not [m for m in after.create if m["kind"] == "Job"]
    # a larger limit is a placement change: the run is made again (it resumes from its last checkpoint)
    larger = spec(resources={"ephemeralStorage": "32Gi"})
    retried = plan(_snapshot([], status=decided.status, jobs=[], s=larger), SETTINGS)
    (job,) = [m for m in retried.create if m["kind"] == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["ephemeral-storage"] == "32Gi"


def test_an_eviction_for_node_disk_pressure_stays_a_free_retry() -> None:
    decided = plan(_snapshot([_evicted(NODE_PRESSURE)]), SETTINGS)
    assert decided.status["phase"] != "Failed" and not [d for d in decided.delete if d.kind == "Job"]
