"""Early stopping of a sweep's trials, pure: each trial's validation-loss curve, and the median stopping rule.

Why apart: the rule is a small numeric function of curves with its own table of cases (tests/unit/operator/
test_finetunesweep_plan.py); the plan only asks which running trials it stops now.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from finetune_operator.api.finetunesweep import SweepSpec, TrialStoppingSpec
from finetune_operator.finetunesweep.observed import TrialObs, trial_objective

CURVE_POINTS = 32  # at most this many (step, validation loss) points are remembered per trial
LOSS_DIGITS = 6  # significant digits a remembered validation loss keeps (the status stays small at 1,000 trials)


@dataclass(frozen=True)
class Stop:
    name: str
    reason: str
    uid: str = ""  # the trial's uid: the patch applies to that object only


Curve = list[list[float]]  # [[step, validation loss], ...]


def curves_of(status: dict[str, Any], trials: dict[int, TrialObs]) -> dict[int, Curve]:
    """Each trial's remembered (step, validation loss) points plus what its status reports now."""
    remembered = {int(t.get("index", -1)): list(t.get("curve") or []) for t in status.get("trials") or []}
    out: dict[int, Curve] = {}
    for index in set(remembered) | set(trials):
        curve = [list(p) for p in remembered.get(index, [])]
        trial = trials.get(index)
        fresh = trial is not None and trial.step is not None and trial.validation_loss is not None
        if trial and fresh and not any(int(p[0]) == trial.step for p in curve):
            curve.append([float(trial.step or 0), float(trial.validation_loss or 0.0)])
            curve.sort()
        out[index] = compact(curve)
    return out


def compact(curve: Curve) -> Curve:
    """The points of a sorted curve the median rule can read, rounded: each point that lowered the best loss so
    far, and the latest point (the trial's progress), at most CURVE_POINTS of them (the latest).

    Why lossless for the rule: the rule reads a curve only through `_best_until` (the least loss up to a step) and
    its latest step; a point that did not lower the best changes neither, so dropping it changes no decision,
    and the status of a 1,000-trial sweep keeps to a bounded size (MAX_TRIALS in api/finetunesweep.py)."""
    kept: Curve = []
    best = math.inf
    for position, (step, loss) in enumerate(curve):
        if loss < best or position == len(curve) - 1:
            kept.append([int(step), float(f"{loss:.{LOSS_DIGITS}g}")])
        best = min(best, loss)
    return kept[-CURVE_POINTS:]


def _best_until(curve: Curve, step: float) -> float | None:
    seen = [p[1] for p in curve if p[0] <= step]
    return min(seen) if seen else None


def median_rule(rule: TrialStoppingSpec, curve: Curve, completed: list[Curve]) -> str:
    """Why to stop a running trial, or "": its best validation loss up to its latest step S (S >= afterSteps)
    is worse than the median of the completed trials' best validation losses up to S (at least minTrials
    of them reported one by S): the median stopping rule of Google Vizier, as Katib implements it."""
    if not curve or curve[-1][0] < rule.after_steps:
        return ""
    step = curve[-1][0]
    others = [b for b in (_best_until(c, step) for c in completed) if b is not None]
    mine = _best_until(curve, step)
    if len(others) < rule.min_trials or mine is None:
        return ""
    median = statistics.median(others)
    if mine <= median:
        return ""
    return (
        f"median rule: best validation loss {mine:.4g} by step {int(step)} is worse than the median {median:.4g} "
        f"of {len(others)} completed trials by the same step"
    )


def early_stops(spec: SweepSpec, trials: dict[int, TrialObs], curves: dict[int, Curve]) -> list[Stop]:
    """The running trials the early-stopping rule stops now (none when it is not configured)."""
    if spec.early_stopping is None:
        return []
    completed = [curves.get(i, []) for i, t in trials.items() if trial_objective(spec, t) is not None]
    stops = []
    for index, trial in sorted(trials.items()):
        if trial.finished or trial.phase not in ("Training", "Evaluating"):
            continue
        reason = median_rule(spec.early_stopping, curves.get(index, []), completed)
        if reason:
            stops.append(Stop(trial.name, reason, trial.uid))
    return stops
