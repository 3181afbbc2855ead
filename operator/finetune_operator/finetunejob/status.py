"""The FineTuneJob's status, pure: from what one pass decided (the run, its state, the gate, serving, the trainer's
validated progress) to the new status and the Events that announce news (a phase change, tracking newly degraded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetune_operator.api import conditions as cond
from finetune_operator.api.finetunejob import FineTuneJobSpec
from finetune_operator.api.objects import Event
from finetune_operator.api.published import Published
from finetune_operator.finetunejob.apikey import key_of
from finetune_operator.finetunejob.gate import GateResult
from finetune_operator.finetunejob.serving import ServingDecision
from finetune_operator.finetunejob.snapshot import Snapshot
from finetune_operator.finetunejob.tracking import degraded_condition, degraded_news, tracking_of
from finetune_operator.finetunejob.training_state import ErrorInfo, TrainingState
from finetune_operator.modelserver.plan import SharedVerdict


def _ready(
    spec: FineTuneJobSpec,
    endpoint: dict[str, Any] | None,
    available: bool,
    published: Published | None,
    gen: int,
    state: str,
    shared: SharedVerdict | None = None,
    key_missing: str = "",
) -> cond.Condition:
    if not spec.serving.enabled:
        return cond.condition(cond.READY, False, "ServingDisabled", "serving.enabled is false", gen)
    if published is None:
        return cond.condition(cond.READY, False, "NothingPublished", "no run has passed its gate yet", gen)
    if key_missing:
        return cond.condition(cond.READY, False, "ApiKeyMissing", key_missing, gen)
    if shared is not None:
        return cond.condition(cond.READY, shared.reason == "Serving", shared.reason, shared.message, gen)
    if endpoint is None:
        return cond.condition(cond.READY, False, "Publishing", f"rolling out run {published.run}", gen)
    if not available:
        message = f"no serving replica is available (run {endpoint.get('run')})"
        return cond.condition(cond.READY, False, "Unavailable", message, gen)
    if endpoint.get("run") != published.run:
        return cond.condition(
            cond.READY,
            False,
            "RollingOut",
            f"serving run {endpoint.get('run')} while run {published.run} rolls out",
            gen,
        )
    note = f"; {state}" if state else ""
    return cond.condition(cond.READY, True, "Serving", f"serving run {published.run}{note}", gen)


@dataclass(frozen=True)
class Outcome:
    """What one pass decided about the run, the gate and serving: the inputs of the status."""

    run: int
    validation: dict[str, Any] | None
    training_hash: str
    placement: str | None
    retry_token: str | None
    state: TrainingState
    phase: str
    error: ErrorInfo | None
    metrics: dict[str, Any]
    gate: GateResult | None
    published: Published | None
    serving: ServingDecision
    progress: dict[str, Any] | None = None  # status.progress: the trainer's validated report
    evictions: dict[str, Any] | None = None  # status.evictions: the current Job's node-pressure evictions


def status_of(snapshot: Snapshot, outcome: Outcome) -> tuple[dict[str, Any], list[Event]]:
    """The FineTuneJob's new status, and the Event to post when the phase changes. Pure."""
    spec, status, gen = snapshot.spec, snapshot.status, snapshot.generation
    run, state, phase, error, gate = outcome.run, outcome.state, outcome.phase, outcome.error, outcome.gate
    published, serving = outcome.published, outcome.serving
    same_run = int(status.get("run") or 0) == run
    trained = cond.condition(cond.TRAINED, state.phase == "Trained", state.reason, state.message, gen)
    if gate is None:
        gate_cond = cond.condition(cond.GATE_PASSED, None, "NotEvaluated", "the run has not finished training", gen)
    else:
        message = "every rule held" if gate.passed else (error.message if error else "")
        gate_cond = cond.condition(
            cond.GATE_PASSED, gate.passed, "Passed" if gate.passed else "GateFailed", message, gen
        )
    serving_note = f"run {run} is {phase}" if published and published.run != run else ""
    ready = _ready(
        spec, serving.endpoint, serving.available, published, gen, serving_note, serving.shared, serving.key_missing
    )
    key = key_of(spec, snapshot.owner, status, snapshot.api_key)
    run_uri = spec.output.run_uri(run)
    previous_tracking = (status.get("tracking") or {}) if same_run else {}
    tracking = tracking_of(run, state.tracking, outcome.progress or {}, previous_tracking)
    tracking_cond = degraded_condition(spec.tracking.mlflow is not None, tracking, gen)
    new_status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "run": run,
        "trainingSpecHash": outcome.training_hash,
        "trainerRulesHash": snapshot.trainer_rules or status.get("trainerRulesHash"),
        "placementHash": outcome.placement,
        "validation": outcome.validation,
        "retryToken": outcome.retry_token,
        "attempts": max(state.attempts, int(status.get("attempts") or 0) if same_run else 0),
        "conditions": cond.merge(
            status.get("conditions"), [trained, gate_cond, ready, *filter(None, [tracking_cond])], snapshot.now
        ),
        "metrics": outcome.metrics or None,
        "gate": gate.to_status() if gate else None,
        "artifacts": {
            "model": run_uri + "model/",
            "report": run_uri + "report.html",
            "checkpoints": run_uri + "checkpoints/",
            "tensorboard": run_uri + "tensorboard/",
        },
        "tracking": tracking,
        "endpoint": serving.endpoint,
        "serving": key.to_status() if key else None,
        "published": published.to_status() if published else None,
        "progress": outcome.progress,
        "evictions": outcome.evictions,
        "error": error.to_status() if error else None,
    }
    events: list[Event] = []
    if status.get("phase") != phase:
        kind = "Warning" if phase == "Failed" or (phase == "Pending" and error) else "Normal"
        message = error.message if error else f"run {run}: {state.message}"
        events.append(Event(kind, phase, message))
    news = degraded_news(previous_tracking, tracking)
    if news:
        events.append(Event("Warning", "TrackingDegraded", news))
    return new_status, events
