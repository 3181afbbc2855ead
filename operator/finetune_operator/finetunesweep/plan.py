"""FineTuneSweep, pure: `sweep_plan(snapshot) -> plan` (the spec is api.finetunesweep, the trials trials.py).

Why pure and apart from the FineTuneJob planner: a sweep only creates, stops and promotes FineTuneJobs (the
trials), which the FineTuneJob control loop then runs like any other. Every decision of a sweep (which trials
to create next, which to stop, the leaderboard, the winner, the status) is a function of what is observed, so
a table of snapshots tests it without a cluster (tests/unit/operator/test_finetunesweep_plan.py), and a restarted
operator recomputes exactly the same trials: names are `<sweep>-t<index>` and values derive from (seed, index, path).

Selection never reads a test metric: the objective must be a validation metric (the CRD refuses `test_*` and
`parse_sweep_spec` again), the leaderboard holds objective values only, and of the test metrics the sweep
reports the winner's alone, after it was chosen: the held-out test split stays a fair final check.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from finetune_operator.api import conditions as cond
from finetune_operator.api.finetunejob import parse_spec
from finetune_operator.api.finetunesweep import (
    ANNOTATION_PUBLISHED,
    SweepSpec,
)
from finetune_operator.api.objects import Event, Manifest, Owner
from finetune_operator.builders.policy import REFUSED
from finetune_operator.finetunejob.gate import GateResult, evaluate_gate, flatten_metrics
from finetune_operator.finetunesweep.observed import FINISHED, TrialObs, trial_objective
from finetune_operator.finetunesweep.stopping import Curve, Stop, curves_of, early_stops
from finetune_operator.finetunesweep.trials import trial_manifest, trial_name, trial_parameters

USER_ERRORS = frozenset(
    {
        "ConfigInvalid",
        "DatasetInvalid",
        "DiskRequestTooSmall",
        "ModelInvalid",
        "ObjectCorrupt",
        "PlanDoesNotFit",
        "SecretMissing",
        "UnsafeObjectKey",
        REFUSED,
    }
)
"""Trial failures that every other trial would repeat (the template is wrong): no further trial is started."""

DONE = frozenset({*FINISHED, "Stopped", "Deleted"})  # a trial's phase in the sweep's status once it is over
MESSAGE_MAX = 256  # per trial in status.trials (the whole message is on the trial): 1,000 trials stay ~1 MB
LEADERBOARD_SIZE = 10  # status.leaderboard: the best ten; every trial's objective is in status.trials


@dataclass(frozen=True, kw_only=True)
class SweepSnapshot:
    owner: Owner
    generation: int
    spec: SweepSpec
    status: dict[str, Any]
    trials: Sequence[TrialObs] = ()
    now: str = ""


@dataclass(frozen=True)
class Publish:
    """Promote the winning trial: its own FineTuneJob (no owner), serving on, the template's gate."""

    name: str
    patch: dict[str, Any]
    uid: str = ""  # the trial's uid: the patch applies to that object only


@dataclass
class SweepPlan:
    create: list[Manifest] = field(default_factory=list)
    stop: list[Stop] = field(default_factory=list)
    publish: Publish | None = None
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)  # trial creations are reported by the I/O that makes them


def _trial_phase(trial: TrialObs | None, remembered: dict[str, Any]) -> str:
    """The trial's phase in the sweep's status; one that is gone keeps its last phase, or is Deleted if it
    had not finished (someone deleted it: it is not run again, its run folder belongs to the deleted job)."""
    if trial is None:
        before = str(remembered.get("phase") or "Pending")
        return before if before in DONE else "Deleted"
    return "Stopped" if trial.stopped else trial.phase


def _to_create(spec: SweepSpec, trials: dict[int, TrialObs], records: dict[int, Any]) -> list[int]:
    """The next indices to create: lowest first, while fewer than `parallelism` trials are unfinished. A trial
    the status remembers (it existed: status is written after the create) is never created again."""
    unfinished = sum(1 for t in trials.values() if not t.finished)
    room = max(0, spec.parallelism - unfinished)
    missing = [i for i in range(spec.total_trials) if i not in trials and i not in records]
    return missing[:room]


def _leaderboard(spec: SweepSpec, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scored = [r for r in records if r.get("objective") is not None]
    sign = 1.0 if spec.objective.goal == "minimize" else -1.0
    scored.sort(key=lambda r: (sign * float(r["objective"]), int(r["index"])))
    return [
        {"rank": rank, **{k: r[k] for k in ("name", "index", "objective", "parameters")}}
        for rank, r in enumerate(scored[:LEADERBOARD_SIZE], start=1)
    ]


def _publish_patch(spec: SweepSpec, owner: Owner) -> dict[str, Any]:
    serving = {**copy.deepcopy(spec.template.get("serving") or {}), "enabled": True}
    gate = copy.deepcopy((spec.template.get("evaluation") or {}).get("gate") or [])
    return {
        "metadata": {"ownerReferences": None, "annotations": {ANNOTATION_PUBLISHED: owner.name}},
        "spec": {"serving": serving, "evaluation": {"gate": gate}},
    }


def _records(
    spec: SweepSpec,
    owner: Owner,
    trials: dict[int, TrialObs],
    remembered: dict[int, dict[str, Any]],
    curves: dict[int, Curve],
    created: set[str],
    stopping: dict[str, str],
) -> list[dict[str, Any]]:
    """status.trials: every trial created (or being created now), by index; a trial that is gone keeps what
    the status last said of it."""
    out: list[dict[str, Any]] = []
    for index in sorted(set(range(spec.total_trials)) | set(trials) | set(remembered)):
        trial, before, name = trials.get(index), remembered.get(index, {}), trial_name(owner.name, index)
        if trial is None and name not in created and not before:
            continue
        phase = "Pending" if trial is None and name in created else _trial_phase(trial, before)
        message = (stopping.get(name) or trial.stopped or trial.error_message) if trial else before.get("message")
        if trial is None and phase == "Deleted" and before.get("phase") != "Deleted":
            message = f"deleted while {before.get('phase')}; not run again (a new sweep reruns it)"
        phase = "Stopped" if name in stopping else phase
        objective = trial_objective(spec, trial) if trial else before.get("objective")
        # the rule reads the curves of running trials and of those with an objective: a failed, stopped or
        # deleted trial's curve would only take room in a status that must hold 1,000 trials
        read_by_rule = objective is not None or phase not in DONE
        record: dict[str, Any] = {
            "index": index,
            "name": name,
            "parameters": trial_parameters(spec, index),
            "phase": phase,
            "objective": objective,
            "curve": (curves.get(index) or None) if read_by_rule else None,
            "message": str(message or "")[:MESSAGE_MAX],
        }
        out.append({k: v for k, v in record.items() if v is not None and v != ""})
    return out


def _failed_fast(trials: dict[int, TrialObs]) -> TrialObs | None:
    """A trial that failed with a user error while none has succeeded: the template is wrong for all."""
    if any(t.phase in ("Succeeded", "Serving", "Publishing") for t in trials.values()):
        return None
    return next((t for t in sorted(trials.values(), key=lambda t: t.index) if t.error_code in USER_ERRORS), None)


def sweep_plan(snapshot: SweepSnapshot) -> SweepPlan:
    """Which trials to create and stop, whether to promote the winner, and the sweep's new status."""
    spec, owner, status = snapshot.spec, snapshot.owner, snapshot.status
    trials = {t.index: t for t in snapshot.trials if t.index >= 0}
    records = {int(r.get("index", -1)): r for r in status.get("trials") or []}
    broken = _failed_fast(trials)
    create = [] if broken else [trial_manifest(spec, owner, i) for i in _to_create(spec, trials, records)]
    curves = curves_of(status, trials)

    stop = early_stops(spec, trials, curves)
    created = {m["metadata"]["name"] for m in create}
    new_records = _records(spec, owner, trials, records, curves, created, {s.name: s.reason for s in stop})
    leaderboard = _leaderboard(spec, new_records)
    finished = sum(1 for r in new_records if r["phase"] in DONE)
    # every trial to run has finished, and none is still running (maxTrials lowered below what was started)
    settled = all(t.finished for t in trials.values())
    all_done = settled and ((finished >= spec.total_trials and not create) or broken is not None)
    best = leaderboard[0] if leaderboard else None
    winner = _winner(spec, trials, best, status.get("winner")) if all_done and best else None
    publish: Publish | None = None
    if winner and spec.publish_winner:
        chosen = trials.get(int(winner["index"]))
        # Publishing drops the trial's owner reference (deleting the sweep keeps it): from then on the sweep
        # knows it by the uid in status.winner, so that uid is written by one pass and the next one publishes.
        recorded = (status.get("winner") or {}).get("uid")
        if chosen is not None and not chosen.published and chosen.uid and recorded == chosen.uid:
            publish = Publish(chosen.name, _publish_patch(spec, owner), chosen.uid)
    phase, error = _phase(spec, all_done, broken, winner, trials)
    gen = snapshot.generation
    complete = cond.condition(
        "Complete",
        all_done,
        "AllTrialsFinished" if all_done else "TrialsRunning",
        f"{finished} of {spec.total_trials} trials finished",
        gen,
    )
    new_status: dict[str, Any] = {
        "observedGeneration": gen,
        "phase": phase,
        "trialsTotal": spec.total_trials,
        "trialsFinished": finished,
        "summary": f"{finished}/{spec.total_trials}",
        "objective": spec.objective.metric,
        "trials": new_records,
        "leaderboard": leaderboard or None,
        "best": best,
        "winner": winner,
        "conditions": cond.merge(status.get("conditions"), [complete], snapshot.now),
        "error": error,
    }
    events = [Event("Normal", "TrialStopped", f"{s.name}: {s.reason}") for s in stop]
    if status.get("phase") != phase:
        events.append(_phase_event(new_status))
    return SweepPlan(create=create, stop=stop, publish=publish, status=new_status, events=events)


def _phase_event(status: dict[str, Any]) -> Event:
    """The Event of a phase change (`kubectl describe fts`): what a human wants to know at that moment."""
    phase, winner, error = status["phase"], status.get("winner") or {}, status.get("error") or {}
    if phase == "Failed":
        return Event("Warning", "Failed", f"{error.get('code')}: {error.get('message')}")
    if winner and phase in ("Succeeded", "Publishing"):
        test = ", ".join(f"{k}={v:.4g}" for k, v in sorted(winner.get("testMetrics", {}).items()))
        chosen = f"winner {winner['name']} ({status['objective']}={winner['objective']:.4g}; test split: {test})"
        return Event("Normal", phase, f"publishing {chosen}" if phase == "Publishing" else chosen)
    return Event("Normal", phase, f"{status['summary']} trials finished")


def _winner(
    spec: SweepSpec, trials: dict[int, TrialObs], best: dict[str, Any], before: dict[str, Any] | None
) -> dict[str, Any]:
    """The best trial once every trial has finished, with its test metrics (read here, after the choice, and
    for the winner only) and the template's gate judged on them. A winner deleted since keeps what was said."""
    index = int(best["index"])
    trial = trials.get(index)
    if trial is None and before and before.get("name") == best["name"]:
        return before
    metrics = trial.metrics if trial else {}
    test = {k: v for k, v in flatten_metrics(metrics).items() if k.startswith("test_")}
    rules = list(parse_spec(spec.template).evaluation.gate)
    gate: GateResult = evaluate_gate(rules, metrics)
    winner: dict[str, Any] = {
        "name": best["name"],
        "index": index,
        "objective": best["objective"],
        "parameters": best["parameters"],
        "testMetrics": test,
        "gate": gate.to_status(),
    }
    if trial and trial.uid:
        winner["uid"] = trial.uid
    if trial and trial.published:
        winner["published"] = {"finetuneJob": trial.name, "phase": trial.phase, "endpoint": trial.endpoint or None}
    return winner


def _phase(
    spec: SweepSpec,
    all_done: bool,
    broken: TrialObs | None,
    winner: dict[str, Any] | None,
    trials: dict[int, TrialObs],
) -> tuple[str, dict[str, str] | None]:
    if broken is not None:
        message = f"trial {broken.name} failed with {broken.error_code}: {broken.error_message}; no further trial"
        return ("Failed" if all_done else "Running"), {"code": broken.error_code, "message": message[:4096]}
    if not all_done:
        return ("Running" if trials else "Pending"), None
    if winner is None:
        return "Failed", {"code": "NoTrialSucceeded", "message": f"no trial reported {spec.objective.metric}"}
    if not spec.publish_winner:
        return "Succeeded", None
    chosen = trials.get(int(winner["index"]))
    if chosen is None or not chosen.published or chosen.phase in ("Publishing", "Succeeded"):
        return "Publishing", None
    if chosen.phase == "Serving":
        return "Succeeded", None
    code = chosen.error_code or "PublishFailed"
    return "Failed", {"code": code, "message": f"winner {chosen.name}: {chosen.error_message}"[:4096]}
