"""A training pod whose node stopped responding: the run says why nothing is replaced (status NodeLost)."""

from __future__ import annotations

from typing import Any

from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import JobObs, PodObs, pod_obs
from finetune_operator.finetunejob.training_state import training_state


def evicted(reason: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "ft-r1-abcde", "deletionTimestamp": "2026-11-30T13:30:54Z", "labels": {}},
        "spec": {"nodeName": "gpu-7"},
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "Ready", "status": "False"},
                {"type": "DisruptionTarget", "status": "True", "reason": reason},
            ],
        },
    }


def test_an_eviction_for_the_nodes_taint_names_the_node() -> None:
    assert pod_obs(evicted("DeletionByTaintManager")).node_lost == "gpu-7"


def test_a_drain_or_preemption_is_no_lost_node() -> None:
    assert pod_obs(evicted("EvictionByEvictionAPI")).node_lost == ""
    assert pod_obs(evicted("PreemptionByScheduler")).node_lost == ""


def test_a_run_stuck_on_a_lost_node_says_why_and_what_would_free_it() -> None:
    lost = PodObs("ft-r1-abcde", 1, phase="Running", disrupted=True, deleting=True, node_lost="gpu-7")
    state = training_state(JobObs("ft-r1", 1, active=1), [lost], suspend=False, kueue=False, progress={}, run=1)
    assert (state.phase, state.reason) == ("Queued", "NodeLost")
    assert "ft-r1-abcde" in state.message and "gpu-7" in state.message
    assert "node.kubernetes.io/out-of-service" in state.message


def test_once_the_replacement_runs_the_lost_pod_no_longer_matters() -> None:
    lost = PodObs("ft-r1-abcde", 1, phase="Running", disrupted=True, deleting=True, node_lost="gpu-7")
    replacement = PodObs("ft-r1-fghij", 1, phase="Running")
    pods = [lost, replacement]
    state = training_state(JobObs("ft-r1", 1, active=1), pods, suspend=False, kueue=False, progress={}, run=1)
    assert (state.phase, state.reason) == ("Training", "Training")


def test_a_data_check_pod_on_a_lost_node_says_its_next_attempt_waits_not_a_training_replacement() -> None:
    lost = PodObs("ft-r1-check-1", 1, phase="Running", component=COMPONENT_VALIDATOR, deleting=True, node_lost="gpu-7")
    state = training_state(
        JobObs("ft-r1-check", 1, COMPONENT_VALIDATOR), [lost], suspend=False, kueue=False, progress={}, run=1
    )
    assert (state.phase, state.reason) == ("Queued", "NodeLost")
    assert state.message.startswith("validation pod ft-r1-check-1 was evicted from node gpu-7")
    assert "next attempt" in state.message and "checkpoint" not in state.message
