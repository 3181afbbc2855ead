"""The status function, table-driven: observed Job + pods + progress -> phase, reason, error."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.core.observed import JobObs, PodObs, job_obs, parse_termination_message, pod_obs
from finetune_operator.finetunejob.training_state import training_state

OK = json.dumps({"code": "Succeeded", "message": "trained 12 steps", "metrics": {"test": {"loss": 1.2}}})
CORRUPT = json.dumps(
    {"code": "ObjectCorrupt", "message": "s3://b/data/train.jsonl: the object does not match its recorded checksum"}
)
BAD_DATA = json.dumps({"code": "DatasetInvalid", "message": "train.jsonl line 17: missing field 'messages'"})

JOB = JobObs("j-r1", 1, active=1)
RUNNING = PodObs("p1", 1, phase="Running", created="t1")

CASES: list[tuple[str, JobObs | None, list[PodObs], dict[str, Any], bool, bool, str, str, str | None]] = [
    # id, job, pods, progress, suspend, kueue -> phase, reason, error code
    ("no-job", None, [], {}, False, False, "Pending", "Creating", None),
    ("no-job-suspended", None, [], {}, True, True, "Suspended", "Suspended", None),
    ("job-no-pods", JobObs("j-r1", 1), [], {}, False, False, "Queued", "WaitingForPods", None),
    ("kueue-waiting", JobObs("j-r1", 1, suspended=True), [], {}, False, True, "Queued", "Queued", None),
    (
        "user-suspended",
        JobObs("j-r1", 1, suspended=True),
        [],
        {},
        True,
        False,
        "Suspended",
        "Suspended",
        None,
    ),
    (
        "unschedulable",
        JOB,
        [PodObs("p1", 1, unschedulable="0/3 nodes: Insufficient nvidia.com/gpu")],
        {},
        False,
        False,
        "Queued",
        "Unschedulable",
        None,
    ),
    (
        "image-pull",
        JOB,
        [PodObs("p1", 1, waiting_reason="ImagePullBackOff", waiting_message="no such image")],
        {},
        False,
        False,
        "Pending",
        "ImagePullBackOff",
        None,
    ),
    (
        "secret-key-missing",
        JOB,
        [PodObs("p1", 1, waiting_reason="CreateContainerConfigError")],
        {},
        False,
        False,
        "Pending",
        "CreateContainerConfigError",
        None,
    ),
    (
        "starting",
        JOB,
        [PodObs("p1", 1, waiting_reason="ContainerCreating")],
        {},
        False,
        False,
        "Queued",
        "Starting",
        None,
    ),
    (
        "running",
        JOB,
        [RUNNING],
        {"run": 1, "stage": "training", "step": 4, "totalSteps": 10},
        False,
        False,
        "Training",
        "Training",
        None,
    ),
    (
        "ready-pod-not-seen-yet",
        JobObs("j-r1", 1, active=1, ready=1),
        [],
        {},
        False,
        False,
        "Training",
        "Training",
        None,
    ),
    (
        "evaluating",
        JOB,
        [RUNNING],
        {"run": 1, "stage": "evaluating"},
        False,
        False,
        "Evaluating",
        "Evaluating",
        None,
    ),
    (
        "uploading-after-evaluation-stays-evaluating",
        JOB,
        [RUNNING],
        {"run": 1, "stage": "uploading"},
        False,
        False,
        "Evaluating",
        "WritingArtifacts",
        None,
    ),
    (
        "old-run-progress-ignored",
        JOB,
        [RUNNING],
        {"run": 0, "stage": "evaluating"},
        False,
        False,
        "Training",
        "Training",
        None,
    ),
    (
        "complete",
        JobObs("j-r1", 1, succeeded=1, complete=True),
        [PodObs("p1", 1, phase="Succeeded", exit_code=0, termination_message=OK)],
        {},
        False,
        False,
        "Trained",
        "Trained",
        None,
    ),
    (
        "user-error",
        JobObs("j-r1", 1, failed=1, failed_condition=True, failure_reason="PodFailurePolicy"),
        [PodObs("p1", 1, phase="Failed", exit_code=42, termination_message=BAD_DATA)],
        {},
        False,
        False,
        "Failed",
        "DatasetInvalid",
        "DatasetInvalid",
    ),
    (
        "corrupt-object",
        JobObs("j-r1", 1, failed=1, failed_condition=True, failure_reason="PodFailurePolicy"),
        [PodObs("p1", 1, phase="Failed", exit_code=42, termination_message=CORRUPT)],
        {},
        False,
        False,
        "Failed",
        "ObjectCorrupt",
        "ObjectCorrupt",
    ),
    (
        "backoff",
        JobObs("j-r1", 1, failed=4, failed_condition=True, failure_reason="BackoffLimitExceeded"),
        [PodObs(f"p{i}", 1, phase="Failed", exit_code=137, created=f"t{i}") for i in range(4)],
        {},
        False,
        False,
        "Failed",
        "BackoffLimitExceeded",
        "BackoffLimitExceeded",
    ),
    (
        "deadline",
        JobObs(
            "j-r1",
            1,
            failed_condition=True,
            failure_reason="DeadlineExceeded",
            failure_message="Job was active longer than specified deadline",
        ),
        [],
        {},
        False,
        False,
        "Failed",
        "MaxDurationExceeded",
        "MaxDurationExceeded",
    ),
    (
        "validation-deadline",
        JobObs(
            "j-r1-check",
            1,
            component="validator",
            failed_condition=True,
            failure_reason="DeadlineExceeded",
            failure_message="Job was active longer than specified deadline",
        ),
        [],
        {},
        False,
        False,
        "Failed",
        "JobFailed",
        "JobFailed",
    ),
    (
        "pod-done-before-job-complete",
        JobObs("j-r1", 1, active=1),
        [PodObs("p1", 1, phase="Succeeded", exit_code=0, termination_message=OK)],
        {},
        False,
        False,
        "Trained",
        "Trained",
        None,
    ),
    (
        "between-attempts",
        JobObs("j-r1", 1, failed=1),
        [PodObs("p1", 1, phase="Failed", exit_code=1)],
        {},
        False,
        False,
        "Pending",
        "Retrying",
        None,
    ),
    (
        "suspend-after-finish-ignored",
        JobObs("j-r1", 1, succeeded=1, complete=True, suspended=True),
        [],
        {},
        True,
        False,
        "Trained",
        "Trained",
        None,
    ),
]


@pytest.mark.parametrize(
    ("job", "pods", "progress", "suspend", "kueue", "phase", "reason", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_training_state(
    job: JobObs | None,
    pods: list[PodObs],
    progress: dict[str, Any],
    suspend: bool,
    kueue: bool,
    phase: str,
    reason: str,
    code: str | None,
) -> None:
    state = training_state(job, pods, suspend=suspend, kueue=kueue, progress=progress, run=1)
    assert (state.phase, state.reason) == (phase, reason)
    assert (state.error.code if state.error else None) == code


def test_success_reads_metrics_of_rank_zero() -> None:
    rank1 = json.dumps({"code": "Succeeded", "message": "", "metrics": {"test": {"loss": 9.9}}})
    pods = [
        PodObs("a", 1, phase="Succeeded", index=1, termination_message=rank1),
        PodObs("b", 1, phase="Succeeded", index=0, termination_message=OK),
    ]
    state = training_state(
        JobObs("j", 1, complete=True, succeeded=2), pods, suspend=False, kueue=False, progress={}, run=1
    )
    assert state.metrics == {"test": {"loss": 1.2}}


def test_user_error_message_reaches_status() -> None:
    job = JobObs("j-r1", 1, failed=1, failed_condition=True, failure_reason="PodFailurePolicy")
    pods = [PodObs("p1", 1, phase="Failed", exit_code=42, termination_message=BAD_DATA)]
    state = training_state(job, pods, suspend=False, kueue=False, progress={}, run=1)
    assert state.error is not None and "line 17" in state.error.message


def test_backoff_message_names_the_last_attempt() -> None:
    crash = json.dumps({"code": "InternalError", "message": "CUDA error"})
    job = JobObs("j-r1", 1, failed=2, failed_condition=True, failure_reason="BackoffLimitExceeded")
    state = training_state(
        job,
        [PodObs("p", 1, phase="Failed", exit_code=1, termination_message=crash)],
        suspend=False,
        kueue=False,
        progress={},
        run=1,
    )
    assert state.error is not None and "CUDA error" in state.error.message and state.attempts == 2


def test_termination_message_parsing() -> None:
    report = parse_termination_message("some log line\n" + OK)
    assert report is not None and report.code == "Succeeded" and report.metrics == {"test": {"loss": 1.2}}
    raw = parse_termination_message("Traceback (most recent call last): boom")
    assert raw is not None and raw.code == "InternalError" and "boom" in raw.message
    assert parse_termination_message("  ") is None


def test_observations_from_raw_bodies() -> None:
    job = job_obs(
        {
            "metadata": {
                "name": "j-r2",
                "namespace": "ns",
                "uid": "j-uid",
                # the job-uid label names "forged": ownership is read from the controller ownerReference alone
                "labels": {"finetune.dev/run": "2", "finetune.dev/job-uid": "forged"},
                "ownerReferences": [
                    {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "uid": "u", "controller": True}
                ],
                "annotations": {"finetune.dev/training-spec-hash": "h", "finetune.dev/placement-hash": "p"},
            },
            "spec": {"suspend": True},
            "status": {
                "failed": 1,
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy", "message": "m"}
                ],
            },
        }
    )
    assert (job.run, job.owner_uid, job.training_hash, job.placement_hash, job.suspended) == (2, "u", "h", "p", True)
    assert (job.namespace, job.uid) == ("ns", "j-uid")
    assert job.failed_condition and job.failure_reason == "PodFailurePolicy"
    pod = pod_obs(
        {
            "metadata": {
                "name": "p",
                "namespace": "ns",
                "labels": {"finetune.dev/run": "2"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "uid": "j-uid", "controller": True}],
                "annotations": {"batch.kubernetes.io/job-completion-index": "3"},
            },
            "status": {
                "phase": "Failed",
                "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                "containerStatuses": [
                    {"name": "trainer", "state": {"terminated": {"exitCode": 143, "message": "bye"}}}
                ],
            },
        }
    )
    assert (pod.index, pod.exit_code, pod.termination_message, pod.disrupted) == (3, 143, "bye", True)
    assert (pod.namespace, pod.job_uid) == ("ns", "j-uid")


def test_distributed_run_is_trained_only_when_every_index_succeeded() -> None:
    job = JobObs("j-r1", 1, active=1)
    one = [
        PodObs("a", 1, phase="Succeeded", index=0, exit_code=0, termination_message=OK),
        PodObs("b", 1, phase="Running", index=1),
    ]
    kw: dict[str, Any] = {"suspend": False, "kueue": False, "progress": {}, "run": 1, "workers": 2}
    assert training_state(job, one, **kw).phase == "Training"
    both = [one[0], PodObs("b", 1, phase="Succeeded", index=1, exit_code=0)]
    state = training_state(job, both, **kw)
    assert state.phase == "Trained" and state.metrics == {"test": {"loss": 1.2}}
