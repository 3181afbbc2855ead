"""FineTuneSweep planning, pure: parameter values, the trials made, parallelism, early stopping, the leaderboard,
the winner and publishing, and the refusals, each from a snapshot with no cluster."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from finetune_operator.api.finetunesweep import (
    ANNOTATION_PARAMETERS,
    ANNOTATION_PUBLISHED,
    ANNOTATION_STOPPED,
    LABEL_SWEEP_UID,
    LABEL_TRIAL,
    SweepSpec,
    TrialStoppingSpec,
    parse_sweep_spec,
)
from finetune_operator.api.objects import Owner
from finetune_operator.finetunesweep.observed import TrialObs, trial_obs
from finetune_operator.finetunesweep.plan import SweepSnapshot, sweep_plan
from finetune_operator.finetunesweep.stopping import median_rule
from finetune_operator.finetunesweep.trials import trial_parameters
from pydantic import ValidationError

from .support import minimal

OWNER = Owner("team-a", "lr-search", "5e1f0000-aaaa-4bbb-8ccc-ddddeeeeffff")
GATE = [{"metric": "test_loss", "max": 2.0}]


def sweep(**overrides: Any) -> SweepSpec:
    raw: dict[str, Any] = {
        "template": minimal(queueName="team-gpus", evaluation={"gate": GATE}, serving={"enabled": True}),
        "parameters": [
            {"path": "hyperparameters.learningRate", "values": [1e-4, 3e-4]},
            {"path": "method.lora.rank", "values": [8, 16]},
        ],
        "parallelism": 2,
    }
    raw.update(overrides)
    return parse_sweep_spec(raw)


def snapshot(spec: SweepSpec, *trials: TrialObs, status: dict[str, Any] | None = None) -> SweepSnapshot:
    return SweepSnapshot(owner=OWNER, generation=1, spec=spec, status=status or {}, trials=trials, now="T")


def done(index: int, loss: float, test_loss: float = 9.0, **kw: Any) -> TrialObs:
    metrics = {"validation": {"loss": loss}, "test": {"loss": test_loss}}
    kw.setdefault("uid", f"uid-t{index}")
    return TrialObs(name=f"lr-search-t{index}", index=index, phase="Succeeded", metrics=metrics, **kw)


def running(index: int, **kw: Any) -> TrialObs:
    return TrialObs(name=f"lr-search-t{index}", index=index, phase=kw.pop("phase", "Training"), **kw)


# ---- parameter values ----


def test_grid_is_every_combination_in_order_last_parameter_fastest() -> None:
    spec = sweep()
    assert spec.total_trials == 4
    assert [trial_parameters(spec, i) for i in range(4)] == [
        {"hyperparameters.learningRate": 1e-4, "method.lora.rank": 8},
        {"hyperparameters.learningRate": 1e-4, "method.lora.rank": 16},
        {"hyperparameters.learningRate": 3e-4, "method.lora.rank": 8},
        {"hyperparameters.learningRate": 3e-4, "method.lora.rank": 16},
    ]
    assert sweep(maxTrials=3).total_trials == 3


def test_grid_over_a_log_range_spreads_points_evenly_in_log_space() -> None:
    spec = sweep(
        parameters=[
            {"path": "hyperparameters.learningRate", "range": {"min": 1e-5, "max": 1e-3, "scale": "log", "count": 3}}
        ]
    )
    assert [trial_parameters(spec, i)["hyperparameters.learningRate"] for i in range(3)] == [1e-5, 1e-4, 1e-3]


def test_random_values_are_fixed_by_seed_and_index_and_stay_in_range() -> None:
    parameters = [
        {"path": "hyperparameters.learningRate", "range": {"min": 1e-5, "max": 1e-2, "scale": "log"}},
        {"path": "method.lora.rank", "range": {"min": 4, "max": 64, "type": "int", "scale": "log"}},
        {"path": "hyperparameters.batchSize", "values": [4, 8, 16]},
        {"path": "hyperparameters.warmupRatio", "range": {"min": 0.0, "max": 0.1}},
    ]
    spec = sweep(algorithm="random", seed=7, maxTrials=40, parameters=parameters)
    draws = [trial_parameters(spec, i) for i in range(40)]
    assert draws == [
        trial_parameters(sweep(algorithm="random", seed=7, maxTrials=40, parameters=parameters), i) for i in range(40)
    ]
    other = [
        trial_parameters(sweep(algorithm="random", seed=8, maxTrials=40, parameters=parameters), i) for i in range(40)
    ]
    assert draws != other
    lrs = [d["hyperparameters.learningRate"] for d in draws]
    assert all(1e-5 <= lr <= 1e-2 for lr in lrs)
    # log scale: about a third of the draws per decade, not 90 % in the top decade as a linear draw would give
    decades = [sum(1 for lr in lrs if 10**e <= lr < 10 ** (e + 1)) for e in (-5, -4, -3)]
    assert all(d >= 5 for d in decades), decades
    ranks = [d["method.lora.rank"] for d in draws]
    assert all(isinstance(r, int) and 4 <= r <= 64 for r in ranks) and len(set(ranks)) > 5
    assert {d["hyperparameters.batchSize"] for d in draws} == {4, 8, 16}
    assert all(0.0 <= d["hyperparameters.warmupRatio"] <= 0.1 for d in draws)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"objective": {"metric": "test_loss"}}, "a test metric cannot be the objective"),
        ({"objective": {"metric": "train_loss"}}, "must be a validation metric"),
        ({"parameters": [{"path": "resources.gpus", "values": [1]}]}, "not a sweepable field"),
        ({"parameters": [{"path": "method.lora.rank", "values": [8.5]}]}, "takes whole numbers"),
        ({"parameters": [{"path": "method.lora.rank", "range": {"min": 4, "max": 8}}]}, "takes whole numbers"),
        (
            {"parameters": [{"path": "hyperparameters.learningRate", "range": {"min": 0, "max": 1, "scale": "log"}}]},
            "log range needs",
        ),
        (
            {"parameters": [{"path": "hyperparameters.learningRate", "range": {"min": 1e-5, "max": 1e-3}}]},
            "grid needs range.count",
        ),
        ({"algorithm": "random"}, "random search needs maxTrials"),
        ({"template": {"dataset": {"train": {"uri": "s3://d/x.jsonl"}}}}, "baseModel"),
    ],
)
def test_bad_sweeps_are_refused_naming_the_field(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        sweep(**overrides)


# ---- trials ----


def test_first_pass_creates_parallelism_trials_owned_labelled_queued_serving_off_no_gate() -> None:
    plan = sweep_plan(snapshot(sweep()))
    assert [m["metadata"]["name"] for m in plan.create] == ["lr-search-t0", "lr-search-t1"]
    trial = plan.create[1]
    meta, spec = trial["metadata"], trial["spec"]
    assert meta["labels"][LABEL_SWEEP_UID] == OWNER.uid and meta["labels"][LABEL_TRIAL] == "1"
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "FineTuneSweep" and owner["uid"] == OWNER.uid and owner["controller"] is True
    assert json.loads(meta["annotations"][ANNOTATION_PARAMETERS]) == {
        "hyperparameters.learningRate": 1e-4,
        "method.lora.rank": 16,
    }
    assert spec["hyperparameters"]["learningRate"] == 1e-4 and spec["method"]["lora"]["rank"] == 16
    assert spec["queueName"] == "team-gpus"  # queued through Kueue like any FineTuneJob
    assert spec["serving"]["enabled"] is False and spec["evaluation"]["gate"] == []
    assert spec["output"]["uri"] == "s3://artifacts/team-a/support-bot/sweep-5e1f0000/t1/"
    assert plan.status["phase"] == "Pending" and plan.status["summary"] == "0/4"
    assert [t["phase"] for t in plan.status["trials"]] == ["Pending", "Pending"]


def test_parallelism_counts_unfinished_trials_and_creation_goes_lowest_index_first() -> None:
    spec = sweep(parallelism=2)
    assert [m["metadata"]["name"] for m in sweep_plan(snapshot(spec, running(0), done(1, 1.0))).create] == [
        "lr-search-t2"
    ]
    assert sweep_plan(snapshot(spec, running(0), running(1))).create == []
    # a restart that sees every trial makes none; the status of one not yet seen does not duplicate it either
    everything = snapshot(spec, done(0, 1.0), done(1, 1.1), running(2), running(3))
    assert sweep_plan(everything).create == []


def test_an_unfinished_trial_deleted_by_hand_is_not_rerun_and_counts_as_deleted() -> None:
    """Its run folder belongs to the deleted FineTuneJob (the trainer would refuse it to a new one)."""
    remembered = {"trials": [{"index": 0, "name": "lr-search-t0", "phase": "Training"}]}
    plan = sweep_plan(snapshot(sweep(), running(1), status=remembered))
    assert [m["metadata"]["name"] for m in plan.create] == ["lr-search-t2"]
    record = plan.status["trials"][0]
    assert record["phase"] == "Deleted" and record["message"].startswith("deleted while Training")
    assert plan.status["summary"] == "1/4"


def test_a_finished_trial_deleted_by_hand_is_remembered_not_rerun() -> None:
    remembered = {"trials": [{"index": 0, "name": "lr-search-t0", "phase": "Succeeded", "objective": 0.9}]}
    plan = sweep_plan(snapshot(sweep(), status=remembered))
    assert [m["metadata"]["name"] for m in plan.create] == ["lr-search-t1", "lr-search-t2"]
    assert plan.status["leaderboard"][0]["name"] == "lr-search-t0"


# ---- leaderboard and winner ----


def test_leaderboard_best_first_and_winner_only_once_every_trial_finished() -> None:
    spec = sweep()
    plan = sweep_plan(snapshot(spec, done(0, 1.3), done(1, 0.9), done(2, 1.1), running(3)))
    assert [(e["rank"], e["name"], e["objective"]) for e in plan.status["leaderboard"]] == [
        (1, "lr-search-t1", 0.9),
        (2, "lr-search-t2", 1.1),
        (3, "lr-search-t0", 1.3),
    ]
    assert plan.status["best"]["name"] == "lr-search-t1" and plan.status["winner"] is None
    assert plan.status["phase"] == "Running" and plan.status["summary"] == "3/4"


def test_the_winner_is_chosen_on_validation_never_test_and_its_test_metrics_alone_are_reported() -> None:
    spec = sweep(publishWinner=False)
    # t0 has the best test loss but the worse validation loss: selection must not see it
    plan = sweep_plan(
        snapshot(spec, done(0, 1.3, test_loss=0.5), done(1, 0.9, test_loss=1.5), done(2, 1.0), done(3, 1.2))
    )
    winner = plan.status["winner"]
    assert winner["name"] == "lr-search-t1" and winner["objective"] == 0.9
    assert winner["testMetrics"] == {"test_loss": 1.5}
    assert winner["gate"]["passed"] is True  # the template's gate (test_loss <= 2) judged on the winner
    assert plan.status["phase"] == "Succeeded" and plan.publish is None
    assert "test" not in json.dumps(plan.status["leaderboard"])
    complete = plan.status["conditions"][0]
    assert complete["type"] == "Complete" and complete["status"] == "True"


def test_maximize_ranks_higher_first() -> None:
    spec = sweep(objective={"metric": "validation_accuracy", "goal": "maximize"})
    trials = [
        TrialObs(name=f"lr-search-t{i}", index=i, phase="Succeeded", metrics={"validation": {"accuracy": a}})
        for i, a in enumerate([0.7, 0.9, 0.8, 0.6])
    ]
    assert sweep_plan(snapshot(spec, *trials)).status["winner"]["name"] == "lr-search-t1"


def test_publish_promotes_the_winner_without_retraining_then_follows_it_to_serving() -> None:
    spec = sweep(publishWinner=True)
    trials = [done(0, 1.3), done(1, 0.9), done(2, 1.0), done(3, 1.2)]
    # the winner's uid is recorded in status first (publishing drops its owner reference; the sweep then knows
    # it by that uid), and the next pass publishes it, bound to that uid
    chosen = sweep_plan(snapshot(spec, *trials))
    assert chosen.publish is None and chosen.status["winner"]["uid"] == "uid-t1"
    plan = sweep_plan(snapshot(spec, *trials, status=chosen.status))
    assert plan.publish is not None and plan.publish.name == "lr-search-t1" and plan.publish.uid == "uid-t1"
    assert plan.publish.patch == {
        "metadata": {"ownerReferences": None, "annotations": {ANNOTATION_PUBLISHED: "lr-search"}},
        "spec": {"serving": {"enabled": True}, "evaluation": {"gate": GATE}},
    }
    assert plan.status["phase"] == "Publishing"
    promoted = done(1, 0.9, published=True)
    serving = TrialObs(**{**promoted.__dict__, "phase": "Serving", "endpoint": "http://lr-search-t1.team-a:8000/v1"})
    plan = sweep_plan(snapshot(spec, trials[0], serving, *trials[2:]))
    assert plan.publish is None and plan.status["phase"] == "Succeeded"
    assert plan.status["winner"]["published"]["endpoint"] == "http://lr-search-t1.team-a:8000/v1"
    refused = TrialObs(
        **{**promoted.__dict__, "phase": "Failed", "error_code": "GateFailed", "error_message": "run 1 failed its gate"}
    )
    plan = sweep_plan(snapshot(spec, trials[0], refused, *trials[2:]))
    assert plan.status["phase"] == "Failed" and plan.status["error"]["code"] == "GateFailed"
    assert plan.status["winner"]["name"] == "lr-search-t1"  # still the winner, its gate said no


def test_no_trial_succeeding_fails_the_sweep() -> None:
    failed = [
        TrialObs(name=f"lr-search-t{i}", index=i, phase="Failed", error_code="BackoffLimitExceeded") for i in range(4)
    ]
    plan = sweep_plan(snapshot(sweep(), *failed))
    assert plan.status["phase"] == "Failed" and plan.status["error"]["code"] == "NoTrialSucceeded"


def test_a_user_error_in_the_template_starts_no_further_trial() -> None:
    bad = TrialObs(name="lr-search-t0", index=0, phase="Failed", error_code="DatasetInvalid", error_message="line 3")
    plan = sweep_plan(snapshot(sweep(), bad, running(1)))
    assert plan.create == [] and plan.status["phase"] == "Running"
    plan = sweep_plan(
        snapshot(sweep(), bad, TrialObs(name="lr-search-t1", index=1, phase="Failed", error_code="DatasetInvalid"))
    )
    assert plan.status["phase"] == "Failed" and plan.status["error"]["code"] == "DatasetInvalid"
    assert "line 3" in plan.status["error"]["message"]


# ---- early stopping ----


def test_median_rule() -> None:
    rule = TrialStoppingSpec(after_steps=20, min_trials=2)
    completed = [[[10.0, 2.0], [20.0, 1.5], [40.0, 1.0]], [[10.0, 2.2], [20.0, 1.7], [40.0, 1.2]]]
    assert median_rule(rule, [[10.0, 3.0]], completed) == ""  # before afterSteps
    assert "worse than the median 1.6" in median_rule(rule, [[10.0, 3.0], [20.0, 2.5]], completed)
    assert median_rule(rule, [[10.0, 3.0], [20.0, 1.55]], completed) == ""  # better than the median at step 20
    assert median_rule(rule, [[20.0, 2.5]], completed[:1]) == ""  # fewer completed trials than minTrials


def test_early_stopping_suspends_a_clearly_worse_trial_and_remembers_the_curves() -> None:
    spec = sweep(earlyStopping={"afterSteps": 20}, parallelism=4)
    history = {
        "trials": [
            {"index": 0, "name": "lr-search-t0", "phase": "Succeeded", "curve": [[20, 1.5], [40, 1.0]]},
            {"index": 1, "name": "lr-search-t1", "phase": "Succeeded", "curve": [[20, 1.7], [40, 1.2]]},
        ]
    }
    bad = running(2, step=20, validation_loss=2.5)
    good = running(3, step=20, validation_loss=1.4)
    plan = sweep_plan(snapshot(spec, done(0, 1.0), done(1, 1.2), bad, good, status=history))
    assert [s.name for s in plan.stop] == ["lr-search-t2"]
    record = {t["name"]: t for t in plan.status["trials"]}
    assert record["lr-search-t2"]["phase"] == "Stopped" and "median" in record["lr-search-t2"]["message"]
    assert record["lr-search-t3"]["curve"] == [[20.0, 1.4]]
    # a stopped trial (the annotation the sweep wrote) counts as finished and never ranks
    stopped = running(2, phase="Suspended", stopped="median rule: ...")
    plan = sweep_plan(snapshot(spec, done(0, 1.0), done(1, 1.2), stopped, done(3, 1.1), status=history))
    assert plan.stop == [] and plan.status["summary"] == "4/4" and plan.status["winner"]["name"] == "lr-search-t0"
    assert "lr-search-t2" not in [e["name"] for e in plan.status["leaderboard"]]


def test_trial_obs_reads_the_documented_status_paths() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "lr-search-t2", "labels": {LABEL_TRIAL: "2"}, "annotations": {ANNOTATION_STOPPED: "why"}},
        "status": {
            "phase": "Training",
            "run": 1,
            "progress": {"run": 1, "step": 45, "validationStep": 40, "validationLoss": 1.25},
            "metrics": {"validation": {"loss": 1.2}},
            "error": {"code": "X", "message": "y"},
        },
    }
    seen = trial_obs(body)
    assert (seen.index, seen.step, seen.validation_loss, seen.stopped, seen.finished) == (2, 40, 1.25, "why", True)
    stale = {
        **body,
        "status": {**body["status"], "progress": {"run": 0, "validationStep": 40, "validationLoss": math.nan}},
    }
    assert trial_obs(stale).step is None and trial_obs(stale).validation_loss is None
    assert trial_obs({"metadata": {"name": "x", "labels": {LABEL_TRIAL: "two"}}}).index == -1


def test_the_example_sweep_makes_trials_that_are_valid_finetunejobs() -> None:
    import yaml
    from finetune_operator.api.finetunejob import parse_spec

    from .support import EXAMPLES

    body = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text())
    spec = parse_sweep_spec(body["spec"])
    owner = Owner("team-a", body["metadata"]["name"], OWNER.uid)
    trials = [
        sweep_plan(
            SweepSnapshot(owner=owner, generation=1, spec=spec.model_copy(update={"parallelism": 6}), status={})
        ).create
    ]
    (made,) = trials
    assert len(made) == spec.total_trials == 6
    for manifest in made:
        parsed = parse_spec(manifest["spec"])
        assert parsed.serving.enabled is False and 1e-4 <= parsed.hyperparameters.learning_rate <= 3e-3
        assert parsed.method.lora.rank in (4, 8, 16)
    assert len({m["spec"]["hyperparameters"]["learningRate"] for m in made}) == 6


def test_events_on_phase_changes_and_stops_only() -> None:
    spec = sweep()
    finished = [done(0, 1.3), done(1, 0.9, test_loss=1.25), done(2, 1.0), done(3, 1.2)]
    plan = sweep_plan(snapshot(spec, *finished, status={"phase": "Running"}))
    (event,) = plan.events
    assert (event.type, event.reason) == ("Normal", "Succeeded")
    assert event.message == "winner lr-search-t1 (validation_loss=0.9; test split: test_loss=1.25)"
    assert sweep_plan(snapshot(spec, *finished, status={"phase": "Succeeded"})).events == []
    failed = [TrialObs(name=f"lr-search-t{i}", index=i, phase="Failed", error_code="JobFailed") for i in range(4)]
    (event,) = sweep_plan(snapshot(spec, *failed, status={"phase": "Running"})).events
    assert event.type == "Warning" and event.message.startswith("NoTrialSucceeded: ")
    stopping = sweep(earlyStopping={"afterSteps": 20}, parallelism=4)
    history = {"phase": "Running", "trials": [{"index": i, "curve": [[20, 1.0]]} for i in (0, 1)]}
    trials = (done(0, 1.0), done(1, 1.0), running(2, step=20, validation_loss=3.0), running(3))
    (event,) = sweep_plan(snapshot(stopping, *trials, status=history)).events
    assert event.reason == "TrialStopped" and event.message.startswith("lr-search-t2: median rule")


def test_lowering_max_trials_waits_for_the_trials_already_running() -> None:
    trials = (done(0, 1.0), done(1, 0.9), running(2), running(3))
    plan = sweep_plan(snapshot(sweep(maxTrials=2), *trials))
    assert plan.create == [] and plan.status["phase"] == "Running" and plan.status["winner"] is None
    finished = (done(0, 1.0), done(1, 0.9), done(2, 0.8), done(3, 1.1))
    assert sweep_plan(snapshot(sweep(maxTrials=2), *finished)).status["winner"]["name"] == "lr-search-t2"
