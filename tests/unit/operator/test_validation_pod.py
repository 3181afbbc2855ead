"""The data check as bare pods, pure: the operator creates each attempt itself with the validation Job's own rules
(finetunejob/validation_pod.py), so the cluster's Job controller has nothing to do until training."""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec, placement_spec_hash, training_spec_hash
from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import JobObs, PodObs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.plan import Plan, Snapshot, plan
from finetune_operator.finetunejob.validation_pod import as_job

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", validation_deadline_seconds=1800)
PLACEMENT = placement_spec_hash(spec())
PASSED = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": {"estimatedSteps": 20}})


def _snap(s: FineTuneJobSpec, status: dict[str, Any] | None = None, **kw: Any) -> Snapshot:
    return Snapshot(owner=OWNER, generation=1, spec=s, status=status or {}, now="2026-12-07T10:00:00Z", **kw)


def _run1(**status: Any) -> dict[str, Any]:
    return {"run": 1, "trainingSpecHash": training_spec_hash(spec()), **status}


def _attempt(n: int, run: int = 1, **kw: Any) -> PodObs:
    """Attempt `n` of run `run`'s check as the operator made it (controlled by the FineTuneJob, no Job)."""
    fields: dict[str, Any] = {
        "component": COMPONENT_VALIDATOR,
        "owner_uid": OWNER.uid,
        "placement_hash": PLACEMENT,
        "created": f"2026-12-07T10:00:0{n}Z",
        "namespace": OWNER.namespace,
        "uid": f"pod-uid-{run}-{n}",
        **kw,
    }
    return PodObs(f"support-bot-r{run}-check-{n}", run, **fields)


def _evicted(n: int, **kw: Any) -> PodObs:
    """Attempt `n` as the kubelet leaves it after a node-pressure eviction (a DisruptionTarget, its words)."""
    return _attempt(
        n,
        phase="Failed",
        exit_code=137,
        disrupted=True,
        reason="Evicted",
        eviction="The node was low on resource: memory. ",
        **kw,
    )


def _created(p: Plan) -> list[tuple[str, str]]:
    return [(m["kind"], m["metadata"]["name"]) for m in p.create]


def _deleted(p: Plan) -> list[tuple[str, str]]:
    return [(r.kind, r.name) for r in p.delete]


def test_the_first_attempt_is_a_pod_the_operator_makes_not_a_job() -> None:
    p = plan(_snap(spec(), secret_present=True), SETTINGS)
    assert _created(p) == [
        ("ServiceAccount", "support-bot-trainer"),
        ("Role", "support-bot-trainer"),
        ("RoleBinding", "support-bot-trainer"),
        ("ConfigMap", "support-bot-r1-config"),
        ("Pod", "support-bot-r1-check-1"),
    ]
    pod = p.create[-1]
    owner = pod["metadata"]["ownerReferences"][0]
    assert owner["uid"] == OWNER.uid and owner["controller"] is True and owner["kind"] == "FineTuneJob"
    assert pod["metadata"]["labels"]["finetune.dev/component"] == COMPONENT_VALIDATOR
    assert pod["metadata"]["annotations"]["finetune.dev/placement-hash"] == PLACEMENT
    body = pod["spec"]
    assert body["restartPolicy"] == "Never" and body["activeDeadlineSeconds"] == 1800
    assert body["automountServiceAccountToken"] is False and body["securityContext"]["runAsNonRoot"] is True
    container = body["containers"][0]
    assert container["command"][3:4] == ["validate"] and "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert p.status["phase"] == "Queued" and "validation pod created" in p.status["conditions"][0]["message"]


def test_the_users_pod_metadata_reaches_the_pod_and_cannot_override_the_operators_labels() -> None:
    s = spec(podMetadata={"labels": {"team": "a", "finetune.dev/component": "trainer"}, "annotations": {"x": "1"}})
    pod = plan(_snap(s, secret_present=True), SETTINGS).create[-1]
    assert pod["metadata"]["labels"]["team"] == "a" and pod["metadata"]["annotations"]["x"] == "1"
    assert pod["metadata"]["labels"]["finetune.dev/component"] == COMPONENT_VALIDATOR


def test_a_running_attempt_is_the_validating_phase_and_nothing_is_created() -> None:
    p = plan(_snap(spec(), _run1(), pods=[_attempt(1, phase="Running")]), SETTINGS)
    assert p.status["phase"] == "Validating" and p.create == [] and p.delete == []


def test_a_passed_check_makes_the_training_job_without_remaking_the_checks_identity() -> None:
    done = _attempt(1, phase="Succeeded", exit_code=0, termination_message=PASSED)
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=[done]), SETTINGS)
    assert _created(p) == [("ConfigMap", "support-bot-progress"), ("Job", "support-bot-r1")]
    assert p.status["validation"]["passed"] is True and p.status["validation"]["estimatedSteps"] == 20


def test_a_data_error_is_final_no_second_attempt_and_no_training_job() -> None:
    error = json.dumps({"code": "DatasetInvalid", "message": "s3://data/train.jsonl line 3: invalid JSON"})
    failed = _attempt(1, phase="Failed", exit_code=42, termination_message=error)
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=[failed]), SETTINGS)
    assert p.create == [] and p.status["phase"] == "Failed"
    assert p.status["error"] == {"code": "DatasetInvalid", "message": "s3://data/train.jsonl line 3: invalid JSON"}
    again = plan(_snap(spec(), p.status, pods=[failed]), SETTINGS)
    assert again.create == [] and again.status["phase"] == "Failed"


def test_an_out_of_memory_kill_is_final_and_reported_with_the_checks_memory() -> None:
    killed = _attempt(1, phase="Failed", exit_code=137, termination_reason="OOMKilled")
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=[killed]), SETTINGS)
    assert p.create == [] and p.status["error"]["code"] == "OutOfMemory"
    assert SETTINGS.validation_memory in p.status["error"]["message"]


def test_an_infrastructure_failure_is_retried_up_to_the_backoff_limit_then_fails() -> None:
    crashed = [_attempt(1, phase="Failed", exit_code=1)]
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=crashed), SETTINGS)
    assert _created(p) == [("Pod", "support-bot-r1-check-2")]  # only the pod: its identity and config exist
    crashed.append(_attempt(2, phase="Failed", exit_code=1))
    assert _created(plan(_snap(spec(), _run1(phase="Validating"), pods=crashed), SETTINGS)) == [
        ("Pod", "support-bot-r1-check-3")
    ]
    crashed.append(_attempt(3, phase="Failed", exit_code=1))  # 3 failures > min(backoffLimit, 2)
    last = plan(_snap(spec(), _run1(phase="Validating"), pods=crashed), SETTINGS)
    assert last.create == [] and last.status["phase"] == "Failed"
    assert last.status["error"]["code"] == "BackoffLimitExceeded"


def test_an_eviction_is_a_free_retry() -> None:
    evicted = [_evicted(n) for n in (1, 2, 3)]
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=evicted), SETTINGS)
    assert _created(p) == [("Pod", "support-bot-r1-check-4")] and p.status["phase"] != "Failed"


def test_an_attempt_past_its_deadline_fails_the_check() -> None:
    late = _attempt(1, phase="Failed", exit_code=137, reason="DeadlineExceeded")
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=[late]), SETTINGS)
    assert p.create == [] and p.status["phase"] == "Failed"
    assert "activeDeadlineSeconds" in p.status["error"]["message"]


def test_suspending_stops_the_running_attempt_and_resuming_starts_the_next() -> None:
    running = _attempt(1, phase="Running")
    p = plan(_snap(spec(suspend=True), _run1(phase="Validating"), pods=[running]), SETTINGS)
    assert _deleted(p) == [("Pod", "support-bot-r1-check-1")] and p.create == []
    assert p.delete[0].uid == "pod-uid-1-1"  # the delete is bound to the pod observed
    stopping = _attempt(1, phase="Failed", exit_code=143, deleting=True)
    assert plan(_snap(spec(suspend=True), p.status, pods=[stopping]), SETTINGS).create == []
    suspended = plan(_snap(spec(suspend=True), p.status), SETTINGS)
    assert suspended.status["phase"] == "Suspended" and suspended.create == []
    resumed = plan(_snap(spec(), suspended.status, secret_present=True), SETTINGS)
    assert resumed.create[-1]["kind"] == "Pod"


def test_a_placement_change_replaces_every_attempt_and_starts_again() -> None:
    old = [_attempt(1, phase="Failed", exit_code=1), _attempt(2, phase="Pending")]
    moved = spec(resources={"nodeSelector": {"pool": "cpu"}})
    status = {"run": 1, "trainingSpecHash": training_spec_hash(moved), "phase": "Validating"}
    p = plan(_snap(moved, status, pods=old), SETTINGS)
    assert _deleted(p) == [("Pod", "support-bot-r1-check-1"), ("Pod", "support-bot-r1-check-2")]
    trained = next(c for c in p.status["conditions"] if c["type"] == "Trained")
    assert p.create == [] and trained["reason"] == "PlacementChanged"
    fresh = plan(_snap(moved, p.status, secret_present=True), SETTINGS)
    assert fresh.create[-1]["metadata"]["name"] == "support-bot-r1-check-1"
    assert fresh.create[-1]["spec"]["nodeSelector"] == {"pool": "cpu"}


def test_the_retry_annotation_checks_again_from_a_fresh_start() -> None:
    error = json.dumps({"code": "DatasetInvalid", "message": "bad"})
    failed = _attempt(1, phase="Failed", exit_code=42, termination_message=error)
    failed_status = plan(_snap(spec(), _run1(), pods=[failed]), SETTINGS).status
    retried = plan(_snap(spec(), failed_status, pods=[failed], retry_token="1"), SETTINGS)
    assert _deleted(retried) == [("Pod", "support-bot-r1-check-1")]
    gone = plan(_snap(spec(), retried.status, retry_token="1", secret_present=True), SETTINGS)
    assert gone.create[-1]["metadata"]["name"] == "support-bot-r1-check-1" and gone.status["run"] == 1


def test_a_new_run_retires_the_old_runs_check_pods() -> None:
    old = _attempt(1, phase="Running")
    faster = spec(hyperparameters={"epochs": 5})
    p = plan(_snap(faster, _run1(phase="Validating"), pods=[old], secret_present=True), SETTINGS)
    assert p.status["run"] == 2 and ("Pod", "support-bot-r1-check-1") in _deleted(p)
    assert p.create[-1]["metadata"]["name"] == "support-bot-r2-check-1"


def test_repeated_evictions_stop_the_check_without_another_attempt() -> None:
    settings = Settings(trainer_image="trainer:test", node_pressure_evictions=2)
    evicted = [_evicted(n, node="n") for n in (1, 2)]
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=evicted), settings)
    assert p.status["error"]["code"] == "EvictedRepeatedly" and p.create == []


def test_with_a_kueue_queue_the_check_stays_a_job_for_kueue_to_admit() -> None:
    p = plan(_snap(spec(queueName="team-a"), secret_present=True), SETTINGS)
    assert _created(p)[-1] == ("Job", "support-bot-r1-check")


def test_a_check_job_an_older_operator_made_is_followed_to_its_end() -> None:
    job = JobObs("support-bot-r1-check", 1, COMPONENT_VALIDATOR, placement_hash=PLACEMENT, active=1, ready=1)
    running = PodObs("support-bot-r1-check-x7k2p", 1, phase="Running", component=COMPONENT_VALIDATOR, job_uid="j")
    p = plan(_snap(spec(), _run1(phase="Validating"), jobs=[job], pods=[running]), SETTINGS)
    assert p.create == [] and p.delete == [] and p.status["phase"] == "Validating"


def test_the_next_attempt_is_numbered_past_every_attempt_still_listed() -> None:
    pods = [_attempt(1, phase="Failed", exit_code=1), _attempt(2, phase="Failed", exit_code=1, disrupted=True)]
    p = plan(_snap(spec(), _run1(phase="Validating"), pods=pods), SETTINGS)
    assert _created(p) == [("Pod", "support-bot-r1-check-3")]


def test_as_job_counts_like_the_validation_job() -> None:
    assert as_job("c", 1, [], 2, suspend=False) is None
    running = as_job("c", 1, [_attempt(1, phase="Running")], 2, suspend=False)
    assert running is not None and (running.active, running.ready, running.finished) == (1, 1, False)
    stopping = as_job("c", 1, [_attempt(1, phase="Failed", exit_code=143, deleting=True)], 2, suspend=True)
    assert stopping is not None and stopping.deleting and stopping.failed == 0  # a stopped pod is no failure


def test_the_store_files_a_check_pod_under_its_finetunejob_and_forgets_it_with_it() -> None:
    store = Store()
    body = {"metadata": {"namespace": OWNER.namespace, "name": OWNER.name, "uid": OWNER.uid, "resourceVersion": "1"}}
    key = store.put_body(body)
    pod_body = {
        "metadata": {
            "name": "support-bot-r1-check-1",
            "namespace": OWNER.namespace,
            "uid": "p1",
            "labels": {"finetune.dev/component": COMPONENT_VALIDATOR, "finetune.dev/run": "1"},
            "annotations": {"finetune.dev/placement-hash": PLACEMENT},
            "ownerReferences": [
                {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "uid": OWNER.uid, "controller": True}
            ],
        },
        "status": {"phase": "Failed", "reason": "DeadlineExceeded"},
    }
    pod = pod_obs(pod_body)
    assert (pod.owner_uid, pod.placement_hash, pod.reason, pod.uid) == (OWNER.uid, PLACEMENT, "DeadlineExceeded", "p1")
    store.put_pod(pod)
    assert store.owner_of_pod(pod) == key
    view = store.view(key)
    assert view is not None and [p.name for p in view.pods] == ["support-bot-r1-check-1"]
    assert store.prune() == 0 and store.prune() == 0  # a live owner's pod is not an orphan
    other = PodObs("x", 1, component=COMPONENT_VALIDATOR, owner_uid="someone-else", namespace=OWNER.namespace)
    store.put_pod(other)
    assert store.owner_of_pod(other) is None
    view = store.view(key)
    assert view is not None and [p.name for p in view.pods] == ["support-bot-r1-check-1"]  # not another's pod
    store.forget_body(OWNER.namespace, OWNER.name, OWNER.uid)
    assert store.sizes()[1] == 1  # only the stranger's group is left, for prune
    store.prune()
    store.prune()
    assert store.sizes() == (0, 0)
