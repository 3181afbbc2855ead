"""What a sweep observes of each trial FineTuneJob (compact, typed, pure), and a finished trial's objective value.

Why apart: the sweep's memory (store.py) keeps these few fields per trial instead of whole bodies, and the plan,
the early-stopping rule and the leaderboard all read the same observation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api.finetunesweep import (
    ANNOTATION_PUBLISHED,
    ANNOTATION_STOPPED,
    LABEL_TRIAL,
    SWEEP_KIND,
    SweepSpec,
)
from finetune_operator.api.ownership import controller_uid
from finetune_operator.finetunejob.gate import flatten_metrics

INTERMEDIATE_STEP = ("progress", "validationStep")
INTERMEDIATE_VALIDATION_LOSS = ("progress", "validationLoss")
"""Where a trial's status reports the latest validation loss measured during training (every
evaluation.intervalSteps; the trainer's `selection` module writes both) and the step it was measured at: the
one place the early-stopping rule reads it from."""

FINISHED = frozenset({"Succeeded", "Failed", "Serving", "Publishing"})


def _dig(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class TrialObs:
    """What the sweep needs of one trial FineTuneJob, read from its body."""

    name: str
    index: int
    phase: str = "Pending"
    metrics: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    validation_loss: float | None = None
    stopped: str = ""  # the sweep suspended it: why
    error_code: str = ""
    error_message: str = ""
    published: bool = False  # promoted to the sweep's published winner (serving on, own FineTuneJob)
    endpoint: str = ""
    uid: str = ""  # the trial FineTuneJob's own: stop and publish patches apply to this very object
    namespace: str = ""
    controller: str = ""  # its controller FineTuneSweep's uid (api.ownership; never the sweep-uid label)

    @property
    def finished(self) -> bool:
        return bool(self.stopped) or self.phase in FINISHED


def _index(label: Any) -> int:
    """The trial label's index; -1 (not a trial of the plan) when someone wrote something else there."""
    try:
        return int(str(label))
    except ValueError:
        return -1


def trial_obs(body: dict[str, Any]) -> TrialObs:
    meta, status = body.get("metadata", {}), body.get("status") or {}
    annotations = meta.get("annotations") or {}
    error = status.get("error") or {}
    step = _finite(_dig(status, INTERMEDIATE_STEP))
    progress_run = _dig(status, ("progress", "run"))
    current = progress_run is None or progress_run == status.get("run")
    return TrialObs(
        name=meta.get("name", ""),
        index=_index((meta.get("labels") or {}).get(LABEL_TRIAL)),
        phase=str(status.get("phase") or "Pending"),
        metrics=dict(status.get("metrics") or {}),
        step=int(step) if step is not None and current else None,
        validation_loss=_finite(_dig(status, INTERMEDIATE_VALIDATION_LOSS)) if current else None,
        stopped=str(annotations.get(ANNOTATION_STOPPED, "")),
        error_code=str(error.get("code", "")),
        error_message=str(error.get("message", "")),
        published=bool(annotations.get(ANNOTATION_PUBLISHED)),
        endpoint=str((status.get("endpoint") or {}).get("url", "")),
        uid=str(meta.get("uid", "")),
        namespace=str(meta.get("namespace", "")),
        controller=controller_uid(body, SWEEP_KIND),
    )


def trial_objective(spec: SweepSpec, trial: TrialObs | None) -> float | None:
    if trial is None or trial.stopped:
        return None
    gated_out = trial.phase == "Failed" and trial.error_code == "GateFailed"  # a promoted winner's gate said no
    if trial.phase not in ("Succeeded", "Serving", "Publishing") and not gated_out:
        return None
    return flatten_metrics(trial.metrics).get(spec.objective.metric)
