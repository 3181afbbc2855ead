"""The largest FineTuneSweep status the planner can write, shared by the unit test that bounds its size and the
integration test that has a real API server (and etcd, at its default request limit) store it.

Why the largest and not a typical one: a status that does not fit is refused whole, so a sweep that grew past
the limit could never record its last trials or its winner. Every field here is at its ceiling: MAX_TRIALS
trials, a 200-character sweep name (the CRD's limit), eight parameters (the CRD's maxItems), every trial
succeeded with CURVE_POINTS points that each lowered its best loss, and then every trial failed with a message
of MESSAGE_MAX characters.
"""

from __future__ import annotations

import random
from typing import Any

from finetune_operator.api.finetunesweep import MAX_TRIALS, PARAMETERS, parse_sweep_spec
from finetune_operator.api.objects import Owner
from finetune_operator.finetunesweep.observed import TrialObs
from finetune_operator.finetunesweep.plan import MESSAGE_MAX, SweepSnapshot, sweep_plan
from finetune_operator.finetunesweep.stopping import CURVE_POINTS

LONGEST_NAME = "s" * 200


def largest_sweep_spec(template: dict[str, Any]) -> dict[str, Any]:
    """A random search of MAX_TRIALS trials over eight parameters (values with many digits), early stopping on."""
    paths = list(PARAMETERS)[:8]
    parameters = [
        {"path": path, "range": {"min": 1.0, "max": 1000.0, "type": PARAMETERS[path]}}
        if path != "hyperparameters.learningRate"
        else {"path": path, "range": {"min": 1e-6, "max": 1e-2, "scale": "log"}}
        for path in paths
    ]
    return {
        "template": template,
        "parameters": parameters,
        "algorithm": "random",
        "maxTrials": MAX_TRIALS,
        "parallelism": 64,
        "earlyStopping": {"afterSteps": 100},
    }


def largest_statuses(
    template: dict[str, Any], uid: str = "5e1f0000-aaaa-4bbb-8ccc-ddddeeeeffff"
) -> list[dict[str, Any]]:
    """The planner's status with every trial succeeded (the longest curves and a full leaderboard), then with
    every trial failed (the longest messages), for the largest sweep."""
    spec = parse_sweep_spec(largest_sweep_spec(template))
    owner = Owner("team-a", LONGEST_NAME, uid)
    draw = random.Random(0)
    descending = [[float(50 * (s + 1)), 3.0 - s * 0.0123456789 - draw.random() * 1e-3] for s in range(CURVE_POINTS)]
    remembered = {"trials": [{"index": i, "curve": descending} for i in range(MAX_TRIALS)]}
    names = [f"{LONGEST_NAME}-t{i}" for i in range(MAX_TRIALS)]
    succeeded = [
        TrialObs(
            name=names[i],
            index=i,
            phase="Succeeded",
            metrics={"validation": {"loss": draw.random() * 3}, "test": {"loss": draw.random() * 3}},
            uid=f"uid-{i}",
        )
        for i in range(MAX_TRIALS)
    ]
    failed = [
        TrialObs(name=names[i], index=i, phase="Failed", error_code="TrainerCrashed", error_message="m" * 4096)
        for i in range(MAX_TRIALS)
    ]
    out = []
    for trials in (succeeded, failed):
        snapshot = SweepSnapshot(
            owner=owner, generation=1, spec=spec, status=remembered, trials=trials, now="2026-12-07T00:00:00Z"
        )
        out.append(sweep_plan(snapshot).status)
    assert len(out[1]["trials"][0]["message"]) == MESSAGE_MAX
    return out
