"""The Validating phase on a real API server: the run's CPU-only check pod comes first, and only a passed
check lets the training Job (with its GPU request) be created. kwok plays the `finetune_trainer validate` pod
(its exit code and termination message, as the trainer image writes them); the real command runs in the
e2e tier."""

from __future__ import annotations

import json
from typing import Any

from tests.integration.conftest import Jobs, ftj_manifest, kwok_annotations, success_message
from tests.support.waiting import wait_for

SUMMARY = {"schema": "chat", "records": {"train": 80, "validation": 10, "test": 10}, "estimatedSteps": 20}


def _components(jobs: Jobs, namespace: str, name: str) -> list[str]:
    return sorted(j.metadata.labels["finetune.dev/component"] for j in jobs.training_jobs(namespace, name))


def test_a_data_error_fails_the_run_in_validation_and_no_gpu_job_is_ever_created(
    operator_factory: Any, jobs: Jobs, namespace: str
) -> None:
    operator_factory(namespace, args=["--validation"])
    error = {"code": "DatasetInvalid", "message": "s3://data/chat.jsonl line 3: invalid JSON: Expecting value"}
    annotations = kwok_annotations(42, json.dumps(error), delay="500ms")
    jobs.create(namespace, ftj_manifest("bad-data", podMetadata={"annotations": annotations}))
    status = jobs.wait_phase(namespace, "bad-data", "Failed", timeout=90)
    assert status["error"] == error
    assert status["validation"]["passed"] is False
    assert _components(jobs, namespace, "bad-data") == []  # no Job at all: no training Job, no GPU asked for
    checks = jobs.check_pods(namespace, "bad-data")
    assert [p.metadata.name for p in checks] == ["bad-data-r1-check-1"]  # exit 42 is final: no second attempt
    resources = checks[0].spec.containers[0].resources
    assert "nvidia.com/gpu" not in (resources.requests or {}) and "nvidia.com/gpu" not in (resources.limits or {})
    owner = checks[0].metadata.owner_references[0]
    assert owner.kind == "FineTuneJob" and owner.controller is True


def test_a_passed_check_is_recorded_and_then_the_training_job_runs(
    operator_factory: Any, jobs: Jobs, namespace: str
) -> None:
    operator_factory(namespace, args=["--validation"])
    jobs.create(namespace, ftj_manifest("good-data"))
    pod = jobs.check_pod(namespace, "good-data")
    assert pod.metadata.labels["finetune.dev/component"] == "validator"
    assert _components(jobs, namespace, "good-data") == []  # the check is a pod of the operator's, not a Job
    seen = jobs.wait_phase(namespace, "good-data", "Validating", timeout=60)
    assert "checking the data" in next(c for c in seen["conditions"] if c["type"] == "Trained")["message"]
    validated = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": SUMMARY})
    jobs.finish_pod(namespace, pod.metadata.name, 0, validated)

    def training_job() -> Any:
        return next(
            (
                j
                for j in jobs.training_jobs(namespace, "good-data")
                if j.metadata.labels["finetune.dev/component"] == "trainer"
            ),
            None,
        )

    training = wait_for("the training Job after the check", training_job, timeout=60)
    status = jobs.status(namespace, "good-data")
    assert status["validation"]["passed"] is True and status["validation"]["records"] == SUMMARY["records"]
    jobs.finish_pod(namespace, jobs.running_pod(namespace, training.metadata.name).metadata.name, 0, success_message())
    jobs.wait_phase(namespace, "good-data", "Succeeded", timeout=60)


def test_a_failed_attempt_is_replaced_by_the_operator_and_the_check_goes_on(
    operator_factory: Any, jobs: Jobs, namespace: str
) -> None:
    """What the Job controller did for the check's Job, the operator does for its pod: a crash that is not the
    user's (exit 1) starts attempt 2, which passes."""
    operator_factory(namespace, args=["--validation"])
    jobs.create(namespace, ftj_manifest("flaky"))
    first = jobs.check_pod(namespace, "flaky")
    jobs.finish_pod(namespace, first.metadata.name, 1, "connection reset by peer")
    second = wait_for(
        "attempt 2",
        lambda: next((p for p in jobs.check_pods(namespace, "flaky") if p.metadata.name.endswith("-2")), None),
        timeout=60,
    )
    assert jobs.status(namespace, "flaky")["phase"] in ("Validating", "Queued")
    jobs.check_pod(namespace, "flaky")  # kwok runs it
    validated = json.dumps({"code": "Succeeded", "message": "validated: schema chat", "summary": SUMMARY})
    jobs.finish_pod(namespace, second.metadata.name, 0, validated)
    wait_for("the training Job", lambda: _components(jobs, namespace, "flaky") == ["trainer"], timeout=60)
