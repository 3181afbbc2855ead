"""The Validating phase on a real API server: the run's CPU-only check Job comes first, and only a passed
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
    assert _components(jobs, namespace, "bad-data") == ["validator"]  # no training Job, no GPU asked for
    check = jobs.training_jobs(namespace, "bad-data")[0]
    resources = check.spec.template.spec.containers[0].resources
    assert "nvidia.com/gpu" not in (resources.requests or {}) and "nvidia.com/gpu" not in (resources.limits or {})


def test_a_passed_check_is_recorded_and_then_the_training_job_runs(
    operator_factory: Any, jobs: Jobs, namespace: str
) -> None:
    operator_factory(namespace, args=["--validation"])
    jobs.create(namespace, ftj_manifest("good-data"))
    check = wait_for(
        "the validation Job",
        lambda: next((j for j in jobs.training_jobs(namespace, "good-data")), None),
        timeout=60,
    )
    assert check.metadata.labels["finetune.dev/component"] == "validator"
    seen = jobs.wait_phase(namespace, "good-data", "Validating", timeout=60)
    assert "checking the data" in next(c for c in seen["conditions"] if c["type"] == "Trained")["message"]
    pod = jobs.running_pod(namespace, check.metadata.name)
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
