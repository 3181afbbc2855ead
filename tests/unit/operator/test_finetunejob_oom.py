"""Out of memory, without a cluster: an OOM-killed or CUDA-OOM trainer is reported as OutOfMemory with the memory
plan and the changes that would fit, and the Job is made to fail at the first kill (no identical retries)."""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.api.finetunejob import placement_spec_hash, training_spec_hash
from finetune_operator.builders.training import pod_failure_policy
from finetune_operator.core.observed import JobObs, PodObs, pod_obs
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.oom import changes_that_fit, plan_summary
from finetune_operator.finetunejob.plan import Snapshot, plan
from finetune_operator.finetunejob.training_state import training_state

from .support import OWNER, spec

SETTINGS = Settings(trainer_image="trainer:test", validation=False)
GIB = 1024**3
MEMORY_PLAN = {
    "accelerator": "NVIDIA A10G (24 GiB)",
    "budgetBytes": 22 * GIB,
    "estimateBytes": 20 * GIB,
    "fits": True,
    "peakAt": "backward",
    "microBatch": 8,
    "gradientAccumulationSteps": 1,
    "gradientCheckpointing": False,
    "precision": "bf16",
    "worldSize": 1,
    "suggestions": [],
}


def _failed_job(**kw: Any) -> JobObs:
    defaults = {"placement_hash": placement_spec_hash(spec()), "training_hash": training_spec_hash(spec())}
    return JobObs(
        "support-bot-r1", 1, failed=1, failed_condition=True, failure_reason="PodFailurePolicy", **{**defaults, **kw}
    )


def _oom_killed(name: str = "support-bot-r1-abcde") -> PodObs:
    return PodObs(name, 1, phase="Failed", exit_code=137, termination_reason="OOMKilled", created="t1")


def test_the_kubelets_oomkilled_reason_is_read_from_the_trainer_container() -> None:
    body = {
        "metadata": {"name": "p", "labels": {"finetune.dev/run": "1"}},
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                {"name": "trainer", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
            ],
        },
    }
    pod = pod_obs(body)
    assert (pod.exit_code, pod.termination_reason) == (137, "OOMKilled")


def test_exit_137_fails_the_job_at_once_after_the_disruption_rule() -> None:
    rules = pod_failure_policy()["rules"]
    assert rules[0]["action"] == "Ignore" and rules[0]["onPodConditions"][0]["type"] == "DisruptionTarget"
    fail = next(r for r in rules if r["action"] == "FailJob")
    assert set(fail["onExitCodes"]["values"]) == {42, 137} and fail["onExitCodes"]["operator"] == "In"


def test_an_oom_kill_is_out_of_memory_not_a_retry() -> None:
    state = training_state(_failed_job(), [_oom_killed()], suspend=False, kueue=False, progress={}, run=1)
    assert (state.phase, state.reason) == ("Failed", "OutOfMemory")
    assert (
        state.error is not None and "OOMKilled" in state.error.message and "support-bot-r1-abcde" in state.error.message
    )


def test_a_sigkill_without_oomkilled_is_named_as_such() -> None:
    killed = PodObs("p1", 1, phase="Failed", exit_code=137, termination_reason="Error", created="t1")
    state = training_state(_failed_job(), [killed], suspend=False, kueue=False, progress={}, run=1)
    assert state.error is not None and state.error.code == "Killed" and "finetune.dev/retry" in state.error.message


def test_a_disrupted_pod_that_was_killed_is_not_an_oom() -> None:
    """An eviction that ended in a kill is the disruption rule's (a free retry), never OutOfMemory."""
    evicted = PodObs("p1", 1, phase="Failed", exit_code=137, disrupted=True, created="t1")
    job = JobObs("j", 1, failed=3, failed_condition=True, failure_reason="BackoffLimitExceeded")
    state = training_state(job, [evicted], suspend=False, kueue=False, progress={}, run=1)
    assert state.error is not None and state.error.code == "BackoffLimitExceeded"


def _status_with_plan() -> dict[str, Any]:
    first = plan(Snapshot(owner=OWNER, generation=1, spec=spec(), status={}, now="t", secret_present=True), SETTINGS)
    return {**first.status, "validation": {"key": "k", "run": 1, "passed": True, "memoryPlan": MEMORY_PLAN}}


def test_the_status_carries_the_plan_the_limit_and_the_changes_that_fit() -> None:
    s = spec(resources={"memory": "1Gi"})
    snapshot = Snapshot(
        owner=OWNER,
        generation=1,
        spec=s,
        status=_status_with_plan(),
        now="t",
        jobs=[_failed_job(placement_hash=placement_spec_hash(s))],
        pods=[_oom_killed()],
    )
    decided = plan(snapshot, SETTINGS)
    error = decided.status["error"]
    assert decided.status["phase"] == "Failed" and error["code"] == "OutOfMemory"
    assert "estimate 20.0 GiB against a budget of 22.0 GiB on NVIDIA A10G (24 GiB)" in error["message"]
    assert "raise spec.resources.memory (now 1Gi" in error["message"]
    assert "batchSize: auto (now 8" in error["message"] and "gradientCheckpointing: true" in error["message"]
    assert "method.type: qlora" in error["message"] and "more GPUs" in error["message"]
    trained = next(c for c in decided.status["conditions"] if c["type"] == "Trained")
    assert trained["reason"] == "OutOfMemory"
    assert decided.create == []  # no new Job: the same spec is not run again


def test_a_cuda_oom_reported_by_the_trainer_gets_the_same_reason_and_plan() -> None:
    message = json.dumps({"code": "OutOfMemory", "message": "the GPU ran out of memory during the run: CUDA ..."})
    pod = PodObs("p1", 1, phase="Failed", exit_code=42, termination_message=message, created="t1")
    snapshot = Snapshot(
        owner=OWNER, generation=1, spec=spec(), status=_status_with_plan(), now="t", jobs=[_failed_job()], pods=[pod]
    )
    error = plan(snapshot, SETTINGS).status["error"]
    assert error["code"] == "OutOfMemory" and "the GPU ran out of memory" in error["message"]
    assert "memory plan: estimate 20.0 GiB" in error["message"]
    assert "raise spec.resources.memory" not in error["message"]  # the GPU's memory, not the container's


def test_changes_skip_levers_already_pulled_and_put_the_plans_own_first() -> None:
    pulled = spec(hyperparameters={"batchSize": "auto", "gradientCheckpointing": True}, method={"type": "qlora"})
    plan_with = {
        **MEMORY_PLAN,
        "suggestions": [{"change": "fsdp over 2 GPUs", "estimateBytes": 11 * GIB, "fits": True}],
    }
    changes = changes_that_fit(pulled, plan_with, host=False)
    assert changes[0] == "fsdp over 2 GPUs (estimate 11.0 GiB)"
    assert not any("batchSize" in c or "gradientCheckpointing" in c or "qlora" in c for c in changes)
    assert "no memory plan was recorded" in plan_summary(None)
