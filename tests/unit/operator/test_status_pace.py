"""Status patches that only reword conditions wait a moment after the last write (core.status_patch.StatusPace);
every other change is written at once. Pure rules first, then one FineTuneJob's passes through the loop."""

from __future__ import annotations

import copy
from typing import Any

from finetune_operator.api.finetunejob import parse_spec, placement_spec_hash
from finetune_operator.api.labels import COMPONENT_VALIDATOR
from finetune_operator.core.observed import PodObs
from finetune_operator.core.settings import Settings
from finetune_operator.core.status_patch import StatusPace, merge_patch, only_rewords
from finetune_operator.core.store import Store
from finetune_operator.finetunejob.controller import Reconciler

from .support import OWNER, RecordingKube, minimal, new_job_body


def _condition(kind: str, status: str, reason: str, message: str, at: str = "2026-12-07T10:00:00Z") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": at,
        "observedGeneration": 1,
    }


OLD = {
    "phase": "Queued",
    "conditions": [
        _condition("Trained", "False", "WaitingForPods", "training Job created; waiting for its pods to start"),
        _condition("Ready", "False", "ServingDisabled", "serving.enabled is false"),
    ],
}


def _with(trained: dict[str, Any], **status: Any) -> dict[str, Any]:
    new = copy.deepcopy(OLD)
    new["conditions"][0] = trained
    return {**new, **status}


def test_a_reworded_condition_is_only_a_rewording() -> None:
    new = _with(_condition("Trained", "False", "Starting", "training pods scheduled, starting"))
    assert only_rewords(OLD, merge_patch(OLD, new))


def test_anything_more_than_wording_is_not() -> None:
    starting = _condition("Trained", "False", "Starting", "training pods scheduled, starting")
    flipped = _condition("Trained", "True", "Trained", "done", at="2026-12-07T10:05:00Z")
    newer_generation = {**starting, "observedGeneration": 2}
    for new in (
        _with(starting, phase="Training"),  # a phase change
        _with(flipped),  # a condition's status flips
        _with(newer_generation),  # a new generation observed
        _with(starting, error={"code": "X", "message": "y"}),  # another field
        {**OLD, "conditions": OLD["conditions"][:1]},  # a condition goes
        {**OLD, "conditions": [*OLD["conditions"], _condition("GatePassed", "Unknown", "NotEvaluated", "-")]},
    ):
        assert not only_rewords(OLD, merge_patch(OLD, new)), new
    assert not only_rewords({}, merge_patch({}, OLD))  # the first status of all


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_rewording_waits_until_the_interval_after_the_last_write_and_nothing_else_waits() -> None:
    clock = _Clock()
    pace = StatusPace(interval=2.0, clock=clock)
    reworded = merge_patch(OLD, _with(_condition("Trained", "False", "Starting", "scheduled")))
    phase = merge_patch(OLD, _with(_condition("Trained", "False", "Training", "running"), phase="Training"))
    assert pace.hold("u1", OLD, reworded) == 0.0  # nothing written yet by this process: at once
    pace.wrote("u1")
    clock.now += 0.5
    assert pace.hold("u1", OLD, reworded) == 1.5
    assert pace.hold("u1", OLD, phase) == 0.0
    assert pace.hold("u2", OLD, reworded) == 0.0  # per object
    clock.now += 1.5
    assert pace.hold("u1", OLD, reworded) == 0.0
    pace.wrote("u1")
    pace.keep_only(lambda uid: uid != "u1")
    assert pace.hold("u1", OLD, reworded) == 0.0  # forgotten with its object
    pace.wrote("u1")
    pace.forget("u1")
    assert pace.hold("u1", OLD, reworded) == 0.0


SPEC = minimal(storage={})


def _check_pod(phase: str) -> PodObs:
    return PodObs(
        "support-bot-r1-check-1",
        1,
        phase=phase,
        component=COMPONENT_VALIDATOR,
        owner_uid=OWNER.uid,
        namespace=OWNER.namespace,
        node="gpu-1",
        uid="pod-1",
        created="2026-12-07T10:00:00Z",
        placement_hash=placement_spec_hash(parse_spec(SPEC)),
    )


def test_a_pod_scheduled_then_running_a_moment_later_is_one_write_not_two() -> None:
    body = new_job_body(SPEC)
    kube, store = RecordingKube(body), Store()
    loop = Reconciler(kube, store, Settings(trainer_image="trainer:test"))  # type: ignore[arg-type]
    clock = _Clock()
    loop.pace = StatusPace(interval=2.0, clock=clock)
    key = store.put_body(copy.deepcopy(body))

    loop.reconcile(key)  # the check's pod is made: Queued, written
    assert [p.get("phase") for p in kube.patches] == ["Queued"]
    store.put_pod(_check_pod("Pending"))
    clock.now += 0.2
    held = loop.reconcile(key)  # scheduled, not running: a rewording 0.2 s after the last write waits
    assert len(kube.patches) == 1 and held is not None and 1.7 < held <= 1.8

    clock.now += held
    loop.reconcile(key)  # still scheduled once the interval passed: the pass it asked for writes it
    assert len(kube.patches) == 2 and set(kube.patches[1]) == {"conditions"}
    assert "starting" in kube.patches[1]["conditions"][0]["message"]

    store.put_pod(_check_pod("Running"))
    clock.now += 0.1
    loop.reconcile(key)  # running: a phase change goes out at once, however soon after the last write
    assert [p.get("phase") for p in kube.patches] == ["Queued", None, "Validating"]
