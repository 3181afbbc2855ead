"""The Validating phase, pure: a run's data is checked by a CPU-only pod (a Job under Kueue, or one an older operator
made) before the training Job exists; the pod's own attempts are tests/unit/operator/test_validation_pod.py's."""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.api.finetunejob import (
    FineTuneJobSpec,
    placement_spec_hash,
    training_spec_hash,
    validation_spec_hash,
)
from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import JobObs, PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.plan import Plan, Snapshot, plan

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test")
SUMMARY = {
    "schema": "chat",
    "schemaDetected": True,
    "schemaReason": "every record has messages",
    "records": {"train": 80, "validation": 10, "test": 10},
    "tokens": {"train": 9000, "validation": 1100, "test": 1000},
    "truncated": {"train": 0, "validation": 0, "test": 0},
    "estimatedSteps": 20,
    "files": ["s3://data/support/train.jsonl"],
    "splitSources": {
        "train": "dataset.train",
        "validation": "file names in dataset.train (...)",
        "test": "dataset.test",
    },
    "splitRule": "",
    "nearOverlapWithTrain": {"validation": 0, "test": 1},
    "nearOverlapExamples": {"validation": [], "test": ["s3://data/t.jsonl line 1 ~ s3://data/d.jsonl line 9 (0.8)"]},
}


def _snap(s: FineTuneJobSpec, status: dict[str, Any] | None = None, **kw: Any) -> Snapshot:
    return Snapshot(owner=OWNER, generation=1, spec=s, status=status or {}, now="2026-11-30T10:00:00Z", **kw)


def _run1(**status: Any) -> dict[str, Any]:
    """Status of run 1 of the default spec, as the operator wrote it."""
    return {"run": 1, "trainingSpecHash": training_spec_hash(spec()), **status}


def _validator(run: int = 1, s: FineTuneJobSpec | None = None, **kw: Any) -> JobObs:
    placement = placement_spec_hash(s or spec())
    return JobObs(f"support-bot-r{run}-check", run, COMPONENT_VALIDATOR, placement_hash=placement, **kw)


def _pod(run: int = 1, **kw: Any) -> PodObs:
    return PodObs(f"support-bot-r{run}-check-x", run, component=COMPONENT_VALIDATOR, **kw)


def _passed(run: int = 1) -> tuple[JobObs, PodObs]:
    message = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": SUMMARY})
    return _validator(run, succeeded=1, complete=True), _pod(
        run, phase="Succeeded", exit_code=0, termination_message=message
    )


def _kinds(p: Plan) -> list[str]:
    return [m["kind"] for m in p.create]


def _job_names(p: Plan) -> list[str]:
    return [m["metadata"]["name"] for m in p.create if m["kind"] == "Job"]


def _pod_names(p: Plan) -> list[str]:
    return [m["metadata"]["name"] for m in p.create if m["kind"] == "Pod"]


def test_the_first_pod_of_a_run_is_the_cpu_only_check() -> None:
    p = plan(_snap(spec(), secret_present=True), SETTINGS)
    assert _kinds(p) == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Pod"]
    check = p.create[-1]
    assert check["metadata"]["name"] == "support-bot-r1-check-1"
    container = check["spec"]["containers"][0]
    assert container["command"][3:6] == ["validate", "--config", "/etc/finetune/config.json"]
    # where the training pods will run, for the memory plan
    assert container["command"][6:] == ["--gpus", "1", "--gpu-product", "", "--memory-limit", "32Gi"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])  # no GPU is asked for
    assert p.status["phase"] == "Queued" and "validation pod created" in p.status["conditions"][0]["message"]


def test_the_check_is_told_the_gpu_type_the_training_pods_ask_for() -> None:
    s = spec(resources={"gpus": 8, "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}})
    command = plan(_snap(s, secret_present=True), SETTINGS).create[-1]["spec"]["containers"][0]
    assert command["command"][6:10] == ["--gpus", "8", "--gpu-product", "NVIDIA-H100-80GB-HBM3"]
    assert validation_spec_hash(s) != validation_spec_hash(spec(resources={"gpus": 8}))  # a new type is re-checked


def test_the_check_is_told_the_disk_the_job_asks_for_and_a_new_request_is_checked_again() -> None:
    s = spec(resources={"ephemeralStorage": "50Gi"})
    command = plan(_snap(s, secret_present=True), SETTINGS).create[-1]["spec"]["containers"][0]
    assert command["command"][12:14] == ["--disk-limit", "50Gi"]  # the sources must fit it (trainer memory/disk.py)
    assert validation_spec_hash(s) != validation_spec_hash(spec(resources={"ephemeralStorage": "100Gi"}))
    assert validation_spec_hash(spec()) == validation_spec_hash(spec(resources={"cpu": "8"}))


def test_a_running_check_is_the_validating_phase() -> None:
    running = _validator(active=1, ready=1)
    p = plan(_snap(spec(), _run1(), jobs=[running], pods=[_pod(phase="Running")]), SETTINGS)
    assert p.status["phase"] == "Validating" and p.create == []
    assert [e.reason for e in p.events] == ["Validating"]


def test_a_passed_check_records_its_summary_and_creates_the_training_job() -> None:
    job, pod = _passed()
    p = plan(_snap(spec(), _run1(phase="Validating"), jobs=[job], pods=[pod]), SETTINGS)
    assert _job_names(p) == ["support-bot-r1"]
    recorded = p.status["validation"]
    assert recorded["passed"] is True and recorded["key"] == validation_spec_hash(spec())
    assert recorded["records"] == SUMMARY["records"] and recorded["estimatedSteps"] == 20
    assert "files" not in recorded  # file lists stay in the pod's log, not in status
    for key in ("splitSources", "splitRule", "nearOverlapWithTrain"):  # issue 25: where splits came from, near-copies
        assert recorded[key] == SUMMARY[key]
    assert "nearOverlapExamples" not in recorded
    assert p.status["phase"] == "Queued"
    # The check's Job implies its identity and config exist: only what training adds is created.
    assert [(m["kind"], m["metadata"]["name"]) for m in p.create] == [
        ("ConfigMap", "support-bot-progress"),
        ("Job", "support-bot-r1"),
    ]


def test_a_user_error_fails_the_run_in_validation_and_no_training_job_is_ever_made() -> None:
    message = json.dumps({"code": "DatasetInvalid", "message": "s3://data/train.jsonl line 3: invalid JSON"})
    failed = _validator(failed=1, failed_condition=True, failure_reason="PodFailurePolicy")
    pod = _pod(phase="Failed", exit_code=42, termination_message=message)
    p = plan(_snap(spec(), _run1(phase="Validating"), jobs=[failed], pods=[pod]), SETTINGS)
    assert p.status["phase"] == "Failed" and p.create == []
    assert p.status["error"] == {"code": "DatasetInvalid", "message": "s3://data/train.jsonl line 3: invalid JSON"}
    assert p.status["validation"]["passed"] is False
    again = plan(_snap(spec(), p.status, jobs=[failed], pods=[pod]), SETTINGS)
    assert again.create == [] and again.status["phase"] == "Failed"  # stays failed: no retry burns a GPU


def test_retry_annotation_checks_the_fixed_data_again() -> None:
    message = json.dumps({"code": "DatasetInvalid", "message": "bad"})
    failed = _validator(failed=1, failed_condition=True, failure_reason="PodFailurePolicy")
    pod = _pod(phase="Failed", exit_code=42, termination_message=message)
    failed_status = plan(_snap(spec(), _run1(), jobs=[failed], pods=[pod]), SETTINGS).status
    retried = plan(_snap(spec(), failed_status, jobs=[failed], pods=[pod], retry_token="1"), SETTINGS)
    assert [(r.name, r.foreground) for r in retried.delete if r.kind == "Job"] == [("support-bot-r1-check", True)]
    gone = plan(_snap(spec(), retried.status, retry_token="1", secret_present=True), SETTINGS)
    assert _pod_names(gone) == ["support-bot-r1-check-1"] and gone.status["run"] == 1  # started over as a pod


def test_a_new_run_with_the_same_inputs_is_not_checked_twice() -> None:
    job, pod = _passed()
    first = plan(_snap(spec(), _run1(), jobs=[job], pods=[pod]), SETTINGS).status
    faster = spec(hyperparameters={"learningRate": 1e-4})  # a new run, the same data and step count
    p = plan(_snap(faster, first, jobs=[job], secret_present=True), SETTINGS)
    assert p.status["run"] == 2 and _job_names(p) == ["support-bot-r2"]
    assert "support-bot-r2-config" in {m["metadata"]["name"] for m in p.create}  # no check of run 2 made it
    more = spec(hyperparameters={"epochs": 5})  # more steps: the estimate changes, so it is checked again
    assert _pod_names(plan(_snap(more, first, jobs=[job], secret_present=True), SETTINGS)) == ["support-bot-r2-check-1"]


def test_an_existing_training_job_is_adopted_without_a_check() -> None:
    hashes = {"placement_hash": placement_spec_hash(spec()), "training_hash": training_spec_hash(spec())}
    training = JobObs("support-bot-r1", 1, active=1, **hashes)
    p = plan(_snap(spec(), _run1(), jobs=[training]), SETTINGS)
    assert p.create == [] and p.status["phase"] != "Validating"


def test_suspended_no_check_is_started_until_resumed() -> None:
    p = plan(_snap(spec(suspend=True), secret_present=True), SETTINGS)
    assert p.create == [] and p.status["phase"] == "Suspended"


def test_with_a_kueue_queue_the_check_is_queued_like_training() -> None:
    p = plan(_snap(spec(queueName="team-a"), secret_present=True), SETTINGS)
    check = p.create[-1]
    assert check["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and check["spec"]["suspend"] is True


def test_switched_off_the_training_job_comes_first() -> None:
    p = plan(_snap(spec(), secret_present=True), Settings(trainer_image="trainer:test", validation=False))
    assert _job_names(p) == ["support-bot-r1"] and p.status["validation"] is None


def test_a_job_seen_complete_before_its_pod_waits_for_the_pod_and_its_summary() -> None:
    """Watch events of a Job and of its pod arrive apart: the outcome is recorded once the pod says it."""
    job, pod = _passed()
    still_running = _pod(phase="Running")
    early = plan(_snap(spec(), _run1(phase="Validating"), jobs=[job], pods=[still_running]), SETTINGS)
    assert early.status["phase"] == "Validating" and early.status["validation"] is None and early.create == []
    later = plan(_snap(spec(), early.status, jobs=[job], pods=[pod]), SETTINGS)
    assert later.status["validation"]["records"] == SUMMARY["records"] and _job_names(later) == ["support-bot-r1"]


def test_a_job_seen_failed_before_its_pod_waits_for_the_error_that_names_the_line() -> None:
    failed = _validator(failed=1, failed_condition=True, failure_reason="PodFailurePolicy")
    early = plan(_snap(spec(), _run1(phase="Validating"), jobs=[failed], pods=[_pod(phase="Running")]), SETTINGS)
    assert early.status["phase"] == "Validating" and early.status["error"] is None
    message = json.dumps({"code": "DatasetInvalid", "message": "s3://data/train.jsonl line 3: invalid JSON"})
    pod = _pod(phase="Failed", exit_code=42, termination_message=message)
    later = plan(_snap(spec(), early.status, jobs=[failed], pods=[pod]), SETTINGS)
    assert later.status["phase"] == "Failed" and later.status["error"]["code"] == "DatasetInvalid"
