"""A FineTuneSweep of 1,000 trials, pure: the ceiling on trials (a larger grid is refused, naming the field), the
status's size at its largest (under etcd's request limit with room for the spec), remembered curves that
decide exactly what the whole curves decide, and a leaderboard of the best ten."""

from __future__ import annotations

import json
import random

import pytest
from finetune_operator.api.finetunesweep import MAX_TRIALS, TrialStoppingSpec, parse_sweep_spec
from finetune_operator.finetunesweep.plan import LEADERBOARD_SIZE, SweepSnapshot, sweep_plan
from finetune_operator.finetunesweep.stopping import CURVE_POINTS, Curve, _best_until, compact, median_rule
from pydantic import ValidationError

from tests.support.sweeps import largest_statuses, largest_sweep_spec

from .support import minimal
from .test_finetunesweep_plan import OWNER, done, running, snapshot, sweep

ETCD_REQUEST_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes: a bigger object is refused whole
SPEC_ROOM = 256 * 1024  # left for the spec (the template), metadata and managedFields


def grid(*counts: int, **extra: object) -> dict[str, object]:
    paths = ["hyperparameters.learningRate", "hyperparameters.warmupRatio", "method.lora.dropout"]
    chosen = zip(paths[: len(counts)], counts, strict=True)
    parameters = [{"path": path, "range": {"min": 0.001, "max": 0.1, "count": count}} for path, count in chosen]
    return {"template": minimal(), "parameters": parameters, **extra}


def test_a_grid_over_the_ceiling_is_refused_naming_the_field_and_the_way_out() -> None:
    assert parse_sweep_spec(grid(10, 10, 10)).total_trials == MAX_TRIALS == 1000
    with pytest.raises(ValidationError) as refused:
        parse_sweep_spec(grid(16, 16, 4))
    assert "spec.parameters: the grid has 1024 combinations, more than the 1000 trials" in str(refused.value)
    assert "set spec.maxTrials" in str(refused.value)
    assert parse_sweep_spec(grid(16, 16, 4, maxTrials=1000)).total_trials == 1000  # its first 1,000, in order
    with pytest.raises(ValidationError, match=r"spec\.maxTrials: 1001 is more than the 1000 trials"):
        parse_sweep_spec(grid(2, maxTrials=1001))
    with pytest.raises(ValidationError, match=r"spec\.maxTrials: 1001"):
        parse_sweep_spec({**largest_sweep_spec(minimal()), "maxTrials": 1001})


def test_the_largest_status_fits_etcd_with_room_for_the_spec() -> None:
    for status in largest_statuses(minimal()):
        size = len(json.dumps(status, separators=(",", ":")))
        assert size < ETCD_REQUEST_LIMIT - SPEC_ROOM, size
        assert len(status["trials"]) == MAX_TRIALS
    succeeded, failed = largest_statuses(minimal())
    assert len(succeeded["leaderboard"]) == LEADERBOARD_SIZE and succeeded["best"] == succeeded["leaderboard"][0]
    assert all(len(t["curve"]) == CURVE_POINTS for t in succeeded["trials"])
    assert not any("curve" in t for t in failed["trials"])  # the rule never reads a failed trial's curve


def _random_curve(draw: random.Random, points: int) -> Curve:
    steps = sorted(draw.sample(range(10, 400, 10), points))
    return [[float(step), round(draw.uniform(0.5, 3.0), 4)] for step in steps]


def test_remembered_curves_decide_exactly_what_the_whole_curves_decide() -> None:
    draw = random.Random(7)
    rule = TrialStoppingSpec(after_steps=50, min_trials=2)
    for _ in range(300):
        completed = [_random_curve(draw, draw.randint(1, 20)) for _ in range(draw.randint(0, 6))]
        mine = _random_curve(draw, draw.randint(1, 20))
        kept = compact(mine)
        assert kept[-1][0] == mine[-1][0] and len(kept) <= len(mine)
        for step in range(0, 410, 10):
            assert _best_until(kept, step) == _best_until(mine, step)
        assert median_rule(rule, kept, [compact(c) for c in completed]) == median_rule(rule, mine, completed)


def test_a_long_run_keeps_its_latest_points_and_a_failed_trials_curve_is_dropped() -> None:
    steadily_better: Curve = [[float(10 * s), round(3.0 - s / 100, 2)] for s in range(1, 60)]
    assert compact(steadily_better) == [[int(p[0]), p[1]] for p in steadily_better[-CURVE_POINTS:]]
    spec = sweep(earlyStopping={"afterSteps": 20}, parallelism=4)
    history = {"trials": [{"index": i, "curve": [[20, 1.5], [40, 1.6]]} for i in range(4)]}
    failed = running(2, phase="Failed", error_code="TrainerCrashed", error_message="x" * 1000)
    plan = sweep_plan(
        snapshot(spec, done(0, 1.0), running(1), failed, running(3, step=60, validation_loss=1.7), status=history)
    )
    record = {t["index"]: t for t in plan.status["trials"]}
    assert record[0]["curve"] == [[20, 1.5], [40, 1.6]]  # an objective: the rule reads it
    assert record[1]["curve"] == [[20, 1.5], [40, 1.6]]  # running
    assert "curve" not in record[2] and len(record[2]["message"]) == 256
    assert record[3]["curve"] == [[20, 1.5], [60, 1.7]]  # the new point is the latest; 40 lowered nothing


def test_the_leaderboard_holds_the_best_ten_and_every_objective_stays_in_trials() -> None:
    spec = parse_sweep_spec(grid(4, 4, maxTrials=16))
    trials = [done(i, loss=1.0 + (i * 7 % 16) / 10) for i in range(16)]
    trials = [t.__class__(**{**t.__dict__, "name": f"{OWNER.name}-t{t.index}"}) for t in trials]
    status = sweep_plan(SweepSnapshot(owner=OWNER, generation=1, spec=spec, status={}, trials=trials)).status
    objectives = sorted(t["objective"] for t in status["trials"])
    assert len(objectives) == 16
    assert [e["objective"] for e in status["leaderboard"]] == objectives[:LEADERBOARD_SIZE]
    assert [e["rank"] for e in status["leaderboard"]] == list(range(1, 11))
