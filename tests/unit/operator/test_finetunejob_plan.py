"""Lifecycle decisions of one reconcile (the lifecycle the CRD and docs/ describe), without a cluster."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec, placement_spec_hash, training_spec_hash
from finetune_operator.api.labels import ANNOTATION_SPEC_HASH, Names
from finetune_operator.builders.serving import serving_bundle
from finetune_operator.core.observed import DeploymentObs, JobObs, PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.apikey import ApiKey
from finetune_operator.finetunejob.controller import merge_patch
from finetune_operator.finetunejob.plan import Plan, Snapshot, needs_secret_check, plan

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", validation=False)  # the Validating phase has its own tests
CHECKED = Settings(trainer_image="trainer:test")
GATE = {"gate": [{"metric": "test_loss", "max": 1.8}]}
SERVING = {"enabled": True}


def _job(name: str, run: int, **kw: Any) -> JobObs:
    """A Job as the operator makes it: stamped with the placement the default spec asks for."""
    return JobObs(name, run, **{"placement_hash": placement_spec_hash(spec()), **kw})


KEY = ApiKey(Names.of(OWNER.name).api_key, "ab" * 32)
"""The generated key a pass of a serving job has made (the controller makes it before the plan)."""


def _snap(s: FineTuneJobSpec, status: dict[str, Any] | None = None, **kw: Any) -> Snapshot:
    kw.setdefault("api_key", KEY if s.serving.generates_key else None)
    return Snapshot(owner=OWNER, generation=1, spec=s, status=status or {}, now="2026-11-28T15:00:00Z", **kw)


def _done(run: int, loss: float) -> tuple[JobObs, PodObs]:
    message = json.dumps({"code": "Succeeded", "message": "ok", "metrics": {"test": {"loss": loss}}})
    return (
        _job(f"support-bot-r{run}", run, succeeded=1, complete=True),
        PodObs(f"p{run}", run, phase="Succeeded", exit_code=0, termination_message=message),
    )


def _kinds(p: Plan) -> list[str]:
    return [m["kind"] for m in p.create]


def _settle(s: FineTuneJobSpec, p: Plan) -> dict[str, Any]:
    """The status after the plan's status is written (what the next pass reads)."""
    return dict(p.status)


def test_first_pass_creates_rbac_config_and_job() -> None:
    p = plan(_snap(spec(), secret_present=True), SETTINGS)
    assert _kinds(p) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "ConfigMap", "Job"]
    assert p.create[4]["metadata"]["name"] == "support-bot-progress"  # the trainer's channel (builders/rbac.py)
    assert p.status["run"] == 1 and p.status["phase"] == "Queued"
    assert p.status["trainingSpecHash"] == training_spec_hash(spec())
    assert [e.reason for e in p.events] == ["Queued"]


def test_missing_secret_waits_and_rechecks() -> None:
    snap = _snap(spec(), secret_present=False)
    assert needs_secret_check(snap)
    p = plan(snap, SETTINGS)
    assert p.create == [] and p.status["phase"] == "Pending"
    assert p.status["error"]["code"] == "SecretMissing" and p.requeue_after == SETTINGS.secret_recheck_seconds
    trained = next(c for c in p.status["conditions"] if c["type"] == "Trained")
    assert trained["reason"] == "SecretMissing"


def test_secret_is_not_checked_once_the_job_exists() -> None:
    s = spec()
    status = plan(_snap(s, secret_present=True), SETTINGS).status
    assert not needs_secret_check(_snap(s, status, jobs=[_job("support-bot-r1", 1, active=1)]))
    assert not needs_secret_check(_snap(spec(storage={}), {}))


def test_training_change_starts_run_two_and_retires_run_one() -> None:
    s1 = spec()
    status = plan(_snap(s1, secret_present=True), SETTINGS).status
    s2 = spec(hyperparameters={"learningRate": 1e-4})
    p = plan(_snap(s2, status, jobs=[_job("support-bot-r1", 1, active=1)], secret_present=True), SETTINGS)
    assert p.status["run"] == 2 and p.create[-1]["metadata"]["name"] == "support-bot-r2"
    assert ("Job", "support-bot-r1") in [(r.kind, r.name) for r in p.delete]
    assert p.create[-1]["metadata"]["annotations"]["finetune.dev/training-spec-hash"] == training_spec_hash(s2)
    config = json.loads(next(m for m in p.create if m["kind"] == "ConfigMap")["data"]["config.json"])
    assert config["output"]["runUri"].endswith("/run-2/")


def test_restart_after_creating_run_two_adopts_it() -> None:
    s1, s2 = spec(), spec(hyperparameters={"learningRate": 1e-4})
    status = plan(_snap(s1, secret_present=True), SETTINGS).status
    job2 = _job("support-bot-r2", 2, training_hash=training_spec_hash(s2), active=1)
    p = plan(_snap(s2, status, jobs=[job2]), SETTINGS)
    assert p.status["run"] == 2 and p.create == []


def test_serving_only_and_suspend_only_changes_do_not_retrain() -> None:
    s1 = spec()
    status = plan(_snap(s1, secret_present=True), SETTINGS).status
    job = _job("support-bot-r1", 1, active=1)
    for changed in (
        spec(serving={"enabled": True, "replicas": 2}),
        spec(suspend=True),
        spec(evaluation={"gate": [{"metric": "test_loss", "max": 9}]}),
    ):
        p = plan(_snap(changed, status, jobs=[job]), SETTINGS)
        assert p.status["run"] == 1 and p.create == [] and not [r for r in p.delete if r.kind == "Job"]


def test_suspend_patches_the_job_without_kueue() -> None:
    job = _job("support-bot-r1", 1, active=1)
    status = {"run": 1, "trainingSpecHash": training_spec_hash(spec())}
    assert plan(_snap(spec(suspend=True), status, jobs=[job]), SETTINGS).suspend_job == (
        "support-bot-r1",
        True,
    )
    resumed = plan(_snap(spec(), status, jobs=[replace(job, suspended=True, active=0)]), SETTINGS)
    assert resumed.suspend_job == ("support-bot-r1", False)


def test_kueue_suspend_deletes_the_job_and_never_touches_its_suspend_field() -> None:
    s = spec(queueName="q", suspend=True)
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    job = _job("support-bot-r1", 1, active=1)
    p = plan(_snap(s, status, jobs=[job]), SETTINGS)
    assert p.suspend_job is None and [(r.kind, r.name) for r in p.delete] == [("Job", "support-bot-r1")]
    gone = plan(_snap(s, p.status, jobs=[]), SETTINGS)
    assert gone.create == [] and gone.status["phase"] == "Suspended"
    resumed = plan(_snap(spec(queueName="q"), gone.status, jobs=[], secret_present=True), SETTINGS)
    assert resumed.create[-1]["spec"]["suspend"] is True and resumed.suspend_job is None
    admitted = plan(_snap(spec(queueName="q"), gone.status, jobs=[replace(job, suspended=False)]), SETTINGS)
    assert admitted.suspend_job is None


def test_success_without_serving_is_succeeded() -> None:
    s = spec(evaluation=GATE)
    job, pod = _done(1, 1.2)
    p = plan(_snap(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)}, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["phase"] == "Succeeded" and p.status["metrics"] == {"test": {"loss": 1.2}}
    assert p.status["gate"]["passed"] is True and p.apply == [] and p.status["published"] is None


def test_gate_pass_publishes_then_serves_when_available() -> None:
    s = spec(evaluation=GATE, serving=SERVING)
    job, pod = _done(1, 1.2)
    base = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    p = plan(_snap(s, base, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["phase"] == "Publishing" and [m["kind"] for m in p.apply] == [
        "ConfigMap",
        "Service",
        "NetworkPolicy",
        "Deployment",
    ]
    assert p.status["published"]["run"] == 1 and p.status["endpoint"] is None
    digest = p.apply[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    live = DeploymentObs(
        "support-bot",
        1,
        spec_hash=digest,
        replicas=1,
        updated=1,
        available=1,
        ready=1,
        current=True,
        available_condition=True,
    )
    served = plan(_snap(s, p.status, jobs=[job], pods=[pod], deployment=live), SETTINGS)
    assert served.status["phase"] == "Serving" and served.apply == []
    assert served.status["endpoint"] == {
        "url": "http://support-bot.team-a.svc:8000/v1",
        "model": "support-bot",
        "run": 1,
    }
    ready = next(c for c in served.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"


def test_gate_fail_publishes_nothing() -> None:
    s = spec(evaluation=GATE, serving=SERVING)
    job, pod = _done(1, 2.5)
    p = plan(_snap(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)}, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["phase"] == "Failed" and p.status["error"]["code"] == "GateFailed"
    assert "test_loss=2.5 (must be <= 1.8)" in p.status["error"]["message"] and p.apply == []


def _serving_run_one(s: FineTuneJobSpec) -> tuple[dict[str, Any], DeploymentObs]:
    job, pod = _done(1, 1.2)
    p = plan(_snap(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)}, jobs=[job], pods=[pod]), SETTINGS)
    digest = p.apply[-1]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    live = DeploymentObs(
        "support-bot",
        1,
        spec_hash=digest,
        replicas=1,
        updated=1,
        available=1,
        current=True,
        available_condition=True,
    )
    return plan(_snap(s, p.status, jobs=[job], pods=[pod], deployment=live), SETTINGS).status, live


def test_run_two_failing_its_gate_leaves_run_one_serving() -> None:
    s1 = spec(evaluation=GATE, serving=SERVING)
    status, live = _serving_run_one(s1)
    s2 = spec(evaluation=GATE, serving=SERVING, hyperparameters={"learningRate": 1e-4})
    job2, pod2 = _done(2, 2.5)
    training = plan(_snap(s2, status, jobs=[], deployment=live, secret_present=True), SETTINGS)
    assert training.status["run"] == 2 and training.create[-1]["metadata"]["name"] == "support-bot-r2"
    assert training.status["endpoint"]["run"] == 1 and training.apply == []
    p = plan(_snap(s2, training.status, jobs=[job2], pods=[pod2], deployment=live), SETTINGS)
    assert p.status["phase"] == "Failed" and p.status["error"]["code"] == "GateFailed"
    assert p.apply == [] and not [r for r in p.delete if r.kind == "Deployment"]
    assert p.status["endpoint"]["run"] == 1 and p.status["published"]["run"] == 1
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and "serving run 1" in ready["message"]


def test_run_two_passing_rolls_the_deployment() -> None:
    s1 = spec(evaluation=GATE, serving=SERVING)
    status, live = _serving_run_one(s1)
    s2 = spec(evaluation=GATE, serving=SERVING, hyperparameters={"learningRate": 1e-4})
    job2, pod2 = _done(2, 1.0)
    status = {**status, "run": 2, "trainingSpecHash": training_spec_hash(s2)}
    p = plan(_snap(s2, status, jobs=[job2], pods=[pod2], deployment=live), SETTINGS)
    assert p.status["phase"] == "Publishing" and p.status["published"]["run"] == 2
    serve = json.loads(p.apply[0]["data"]["serve.json"])
    assert serve["modelUri"].endswith("/run-2/model/") and p.apply[-1]["metadata"]["labels"]["finetune.dev/run"] == "2"
    assert p.status["endpoint"]["run"] == 1  # still the old pods until the roll completes
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "RollingOut"


def test_serving_replicas_change_reapplies_the_same_model() -> None:
    s1 = spec(evaluation=GATE, serving=SERVING)
    status, live = _serving_run_one(s1)
    s2 = spec(evaluation=GATE, serving={"enabled": True, "replicas": 3})
    job, pod = _done(1, 1.2)
    p = plan(_snap(s2, status, jobs=[job], pods=[pod], deployment=live), SETTINGS)
    assert p.create == [] and p.apply[-1]["spec"]["replicas"] == 3
    assert json.loads(p.apply[0]["data"]["serve.json"])["run"] == 1


def test_disabling_serving_removes_the_bundle() -> None:
    status, live = _serving_run_one(spec(evaluation=GATE, serving=SERVING))
    job, pod = _done(1, 1.2)
    p = plan(_snap(spec(evaluation=GATE), status, jobs=[job], pods=[pod], deployment=live), SETTINGS)
    assert {r.kind for r in p.delete} >= {"Deployment", "Service", "ConfigMap"}
    assert p.status["phase"] == "Succeeded" and p.status["endpoint"] is None


def test_same_observation_gives_no_status_change() -> None:
    s = spec(serving=SERVING)
    first = plan(_snap(s, secret_present=True), SETTINGS)
    second = plan(
        replace(_snap(s, _settle(s, first), jobs=[_job("support-bot-r1", 1)]), now="2026-11-28T16:00:00Z"),
        SETTINGS,
    )
    third = plan(
        replace(_snap(s, _settle(s, second), jobs=[_job("support-bot-r1", 1)]), now="2026-11-28T17:00:00Z"),
        SETTINGS,
    )
    assert merge_patch(second.status, third.status) == {} and third.events == []


def test_deleted_job_of_a_finished_run_is_not_recreated() -> None:
    s = spec()
    job, pod = _done(1, 1.2)
    done = plan(_snap(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)}, jobs=[job], pods=[pod]), SETTINGS)
    again = plan(_snap(s, done.status, jobs=[], secret_present=True), SETTINGS)
    assert again.create == [] and again.status["phase"] == "Succeeded"


def test_conditions_carry_observed_generation() -> None:
    p = plan(replace(_snap(spec(), secret_present=True), generation=7), SETTINGS)
    assert {c["observedGeneration"] for c in p.status["conditions"]} == {7}
    assert p.status["observedGeneration"] == 7


def test_serving_bundle_hash_is_stable() -> None:
    s = spec(serving=SERVING)
    from finetune_operator.builders.serving import Published

    pub = Published(1, "causal-lm", "s3://m/", "s3://o/", True)
    one, two = serving_bundle(s, OWNER, pub, SETTINGS), serving_bundle(s, OWNER, pub, SETTINGS)
    assert one[-1]["metadata"]["annotations"] == two[-1]["metadata"]["annotations"]


def test_trainer_progress_reports_do_not_make_the_operator_write() -> None:
    s = spec()
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    job, pod = _job("support-bot-r1", 1, active=1, ready=1), PodObs("p", 1, phase="Running")
    first = plan(_snap(s, status, jobs=[job], pods=[pod]), SETTINGS).status
    for step in (10, 20, 30):
        progress = {"run": 1, "stage": "training", "step": step, "totalSteps": 100, "percent": step}
        again = plan(_snap(s, {**first, "progress": progress}, jobs=[job], pods=[pod]), SETTINGS)
        assert merge_patch({**first, "progress": progress}, again.status, keep=("progress",)) == {}


def test_attempts_never_go_down_within_a_run() -> None:
    s = spec()
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s), "attempts": 2}
    finishing = _job("support-bot-r1", 1, failed=1)  # counters between a pod's end and the next pod
    assert plan(_snap(s, status, jobs=[finishing]), SETTINGS).status["attempts"] == 2


def test_serving_pods_going_down_keep_the_endpoint_but_clear_ready() -> None:
    s = spec(evaluation=GATE, serving=SERVING)
    status, live = _serving_run_one(s)
    job, pod = _done(1, 1.2)
    down = replace(live, available=0, ready=0, current=False, available_condition=False)
    p = plan(_snap(s, status, jobs=[job], pods=[pod], deployment=down), SETTINGS)
    assert p.status["phase"] == "Serving" and p.status["endpoint"]["run"] == 1 and p.apply == []
    ready = next(c for c in p.status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Unavailable")


def test_relaxing_the_gate_publishes_the_same_run_without_retraining() -> None:
    strict = spec(evaluation=GATE, serving=SERVING)
    job, pod = _done(1, 2.5)
    failed = plan(
        _snap(strict, {"run": 1, "trainingSpecHash": training_spec_hash(strict)}, jobs=[job], pods=[pod]), SETTINGS
    )
    assert failed.status["error"]["code"] == "GateFailed"
    relaxed = spec(evaluation={"gate": [{"metric": "test_loss", "max": 3.0}]}, serving=SERVING)
    p = plan(_snap(relaxed, failed.status, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["run"] == 1 and p.create == [] and p.status["phase"] == "Publishing"
    assert p.status["error"] is None and p.status["published"]["run"] == 1


def _running_under(s: FineTuneJobSpec) -> tuple[dict[str, Any], JobObs]:
    """Status and Job of run 1 training under spec `s` (the Job stamped with its placement)."""
    first = plan(_snap(s, secret_present=True), SETTINGS)
    stamp = first.create[-1]["metadata"]["annotations"]["finetune.dev/placement-hash"]
    return first.status, JobObs(
        "support-bot-r1", 1, training_hash=training_spec_hash(s), placement_hash=stamp, active=1
    )


def _replacement_rounds(changed: FineTuneJobSpec, status: dict[str, Any], job: JobObs) -> Plan:
    """Drive a placement change through: delete in the foreground, wait while deleting, create when gone."""
    replacing = plan(_snap(changed, status, jobs=[job]), SETTINGS)
    assert [(r.kind, r.name, r.foreground) for r in replacing.delete] == [("Job", "support-bot-r1", True)]
    assert replacing.create == [] and replacing.status["run"] == 1
    trained = next(c for c in replacing.status["conditions"] if c["type"] == "Trained")
    assert (replacing.status["phase"], trained["reason"]) == ("Queued", "PlacementChanged")
    assert replacing.status["placementHash"] == job.placement_hash  # what the live pods still run with
    deleting = plan(_snap(changed, replacing.status, jobs=[replace(job, deleting=True)]), SETTINGS)
    assert deleting.create == [] and not [r for r in deleting.delete if r.kind == "Job"]
    return plan(_snap(changed, deleting.status, jobs=[], secret_present=True), SETTINGS)


def test_placement_change_replaces_the_running_job_and_resumes_the_same_run() -> None:
    before, after = spec(resources={"memory": "32Gi"}), spec(resources={"memory": "64Gi"})
    status, job = _running_under(before)
    recreated = _replacement_rounds(after, status, job)
    new_job = recreated.create[-1]
    assert new_job["metadata"]["name"] == "support-bot-r1" and recreated.status["run"] == 1
    container = new_job["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "64Gi"
    config = json.loads(next(m for m in recreated.create if m["kind"] == "ConfigMap")["data"]["config.json"])
    assert config["output"]["runUri"].endswith("/run-1/")  # same folder: the trainer resumes its checkpoints
    assert recreated.status["placementHash"] == new_job["metadata"]["annotations"]["finetune.dev/placement-hash"]
    assert recreated.status["trainingSpecHash"] == status["trainingSpecHash"]


def test_queue_and_pod_metadata_changes_replace_the_job_too() -> None:
    status, job = _running_under(spec())
    moved = _replacement_rounds(spec(queueName="team-b"), status, job).create[-1]
    assert moved["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-b"
    labelled = _replacement_rounds(spec(podMetadata={"labels": {"cost-center": "42"}}), status, job).create[-1]
    assert labelled["spec"]["template"]["metadata"]["labels"]["cost-center"] == "42"


def test_placement_change_retries_a_failed_run_with_the_new_placement() -> None:
    before, after = spec(resources={"memory": "8Gi"}), spec(resources={"memory": "64Gi"})
    status, job = _running_under(before)
    oom = PodObs("p1", 1, phase="Failed", exit_code=137)
    failed_job = replace(job, active=0, failed=3, failed_condition=True, failure_reason="BackoffLimitExceeded")
    failed = plan(_snap(before, status, jobs=[failed_job], pods=[oom]), SETTINGS)
    assert failed.status["phase"] == "Failed"
    # Unchanged spec: a failed run stays failed, even after its Job is deleted by hand.
    assert plan(_snap(before, failed.status, jobs=[], secret_present=True), SETTINGS).create == []
    retried = _replacement_rounds(after, failed.status, failed_job)
    assert recreated_job_name(retried) == "support-bot-r1" and retried.status["run"] == 1
    assert retried.status["phase"] == "Queued" and retried.status["error"] is None
    # The failed Job was already deleted by hand: the change alone retries it.
    by_hand = plan(_snap(after, failed.status, jobs=[], secret_present=True), SETTINGS)
    assert recreated_job_name(by_hand) == "support-bot-r1"


def recreated_job_name(p: Plan) -> str | None:
    return next((m["metadata"]["name"] for m in p.create if m["kind"] == "Job"), None)


def test_placement_change_leaves_a_succeeded_or_gate_failed_run_alone() -> None:
    before, after = (
        spec(resources={"memory": "32Gi"}, evaluation=GATE),
        spec(resources={"memory": "64Gi"}, evaluation=GATE),
    )
    status, job = _running_under(before)
    for loss, phase in ((1.2, "Succeeded"), (2.5, "Failed")):  # 2.5 fails the gate (max 1.8)
        done_job, pod = _done(1, loss)
        done_job = replace(done_job, placement_hash=job.placement_hash)
        done = plan(_snap(before, status, jobs=[done_job], pods=[pod]), SETTINGS)
        assert done.status["phase"] == phase
        for jobs in ([done_job], []):
            again = plan(_snap(after, done.status, jobs=jobs, pods=[pod], secret_present=True), SETTINGS)
            assert again.create == [] and again.delete == [] and again.status["phase"] == phase


def _failed_run(s: FineTuneJobSpec, retry_token: str = "") -> tuple[Plan, JobObs]:
    status, job = _running_under(s)
    failed_job = replace(job, active=0, failed=1, failed_condition=True, failure_reason="BackoffLimitExceeded")
    crash = PodObs("p1", 1, phase="Failed", exit_code=1)
    failed = plan(_snap(s, status, jobs=[failed_job], pods=[crash], retry_token=retry_token), SETTINGS)
    assert failed.status["phase"] == "Failed" and failed.status["retryToken"] == (retry_token or None)
    return failed, failed_job


def test_a_new_retry_token_retries_a_failed_run_once() -> None:
    s = spec()
    failed, failed_job = _failed_run(s)
    asked = plan(_snap(s, failed.status, jobs=[failed_job], retry_token="1"), SETTINGS)
    assert [(r.kind, r.foreground) for r in asked.delete] == [("Job", True)] and asked.create == []
    trained = next(c for c in asked.status["conditions"] if c["type"] == "Trained")
    assert (asked.status["phase"], trained["reason"]) == ("Queued", "RetryRequested")
    assert asked.status.get("retryToken") is None  # not acted on yet: the new Job does not exist
    deleting = plan(_snap(s, asked.status, jobs=[replace(failed_job, deleting=True)], retry_token="1"), SETTINGS)
    assert deleting.create == [] and deleting.status.get("retryToken") is None
    retried = plan(_snap(s, deleting.status, jobs=[], secret_present=True, retry_token="1"), SETTINGS)
    assert recreated_job_name(retried) == "support-bot-r1" and retried.status["run"] == 1
    assert retried.status["retryToken"] == "1" and retried.status["phase"] == "Queued"
    # The retried run fails again: the same token does not retry it a second time.
    again = plan(_snap(s, retried.status, jobs=[failed_job], retry_token="1"), SETTINGS)
    assert again.delete == [] and again.status["phase"] == "Failed"
    gone = plan(_snap(s, again.status, jobs=[], secret_present=True, retry_token="1"), SETTINGS)
    assert gone.create == [] and gone.status["phase"] == "Failed"


def test_a_retry_token_on_a_healthy_or_gate_failed_run_is_only_recorded() -> None:
    s = spec(evaluation=GATE)
    status, job = _running_under(s)
    running = plan(_snap(s, status, jobs=[job], retry_token="a"), SETTINGS)
    assert running.delete == [] and running.create == [] and running.status["retryToken"] == "a"
    done_job, pod = _done(1, 2.5)  # fails the gate: a trained model, retrying cannot help
    gate_failed = plan(_snap(s, status, jobs=[done_job], pods=[pod]), SETTINGS)
    assert gate_failed.status["error"]["code"] == "GateFailed"
    asked = plan(_snap(s, gate_failed.status, jobs=[done_job], pods=[pod], retry_token="b"), SETTINGS)
    assert asked.delete == [] and asked.create == [] and asked.status["retryToken"] == "b"
