"""The operator alone decides (issue 24, attack 2): what a trainer or a status writer writes never decides what is
published or served, and the trainer's progress reaches the status only through the checks of
finetunejob/progress.py. Pure: plans and the progress validator, no cluster (tests/integration/test_status_trust.py
runs the same attacks on a real API server)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from finetune_operator.api.finetunejob import training_spec_hash
from finetune_operator.builders.rbac import progress_config_map
from finetune_operator.core.observed import PodObs
from finetune_operator.finetunejob.plan import plan
from finetune_operator.finetunejob.progress import MAX_DOCUMENT_BYTES, progress_of, report_in, validated

from .support import OWNER, spec
from .test_finetunejob_plan import GATE, SERVING, SETTINGS, _done, _job, _serving_run_one, _snap

FOREIGN = {
    "run": 1,
    "task": "causal-lm",
    "baseModelUri": "s3://models/tiny/",
    "modelUri": "s3://someone-elses-bucket/their-job/run-3/model/",
    "adapter": True,
    "loraRank": 16,
}


def _training(run: int = 1) -> tuple[Any, PodObs]:
    return _job(f"support-bot-r{run}", run, active=1), PodObs(f"p{run}", run, phase="Running")


def test_a_published_record_forged_while_the_run_trains_is_dropped_and_serves_nothing() -> None:
    s = spec(evaluation=GATE, serving=SERVING)
    job, pod = _training()
    forged = {"run": 1, "trainingSpecHash": training_spec_hash(s), "phase": "Training", "published": FOREIGN}
    p = plan(_snap(s, forged, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["published"] is None and p.apply == [] and p.status["phase"] == "Training"
    own_uri = {**FOREIGN, "modelUri": "s3://artifacts/team-a/support-bot/run-1/model/"}
    p = plan(_snap(s, {**forged, "published": own_uri}, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["published"] is None and p.apply == []  # the run itself: only its gate publishes it


def test_an_earlier_published_run_is_kept_but_its_model_is_always_its_own_folder() -> None:
    s1 = spec(evaluation=GATE, serving=SERVING)
    status, live = _serving_run_one(s1)
    s2 = spec(evaluation=GATE, serving=SERVING, hyperparameters={"learningRate": 1e-4})
    job, pod = _training(2)
    status = {**status, "run": 2, "trainingSpecHash": training_spec_hash(s2)}
    honest = plan(_snap(s2, status, jobs=[job], pods=[pod], deployment=live), SETTINGS)
    assert honest.status["published"] == status["published"] and honest.apply == []
    forged = {**status, "published": {**status["published"], "modelUri": FOREIGN["modelUri"]}}
    p = plan(_snap(s2, forged, jobs=[job], pods=[pod], deployment=live), SETTINGS)
    assert p.status["published"] == status["published"]  # put back: s3://artifacts/team-a/support-bot/run-1/model/
    assert p.apply == []  # the bundle rendered from the derived record is the one running: nothing to change
    ahead = {**status, "published": {**status["published"], "run": 2}}
    assert plan(_snap(s2, ahead, jobs=[job], pods=[pod], deployment=live), SETTINGS).status["published"] is None


def test_a_gated_run_is_published_from_its_pods_report_whatever_the_status_said() -> None:
    s = spec(evaluation=GATE, serving=SERVING)
    job, pod = _done(1, 1.2)
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s), "published": FOREIGN}
    p = plan(_snap(s, status, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["published"]["modelUri"] == "s3://artifacts/team-a/support-bot/run-1/model/"
    assert json.loads(p.apply[0]["data"]["serve.json"])["modelUri"] == p.status["published"]["modelUri"]


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (
            {"run": 1, "stage": "training", "step": 7, "loss": 1.25},
            {"run": 1, "stage": "training", "step": 7, "loss": 1.25},
        ),
        ({"run": 1, "step": -5, "totalSteps": 10**13, "percent": 500}, {"run": 1}),  # out of range
        ({"run": 1, "loss": float("nan"), "epoch": float("inf"), "learningRate": 1e300}, {"run": 1}),  # not finite
        ({"run": 1, "stage": "published", "earlyStopped": "yes", "step": True}, {"run": 1}),  # wrong enum or type
        (
            {"run": 1, "updatedAt": "tomorrow", "estimatedFinishTime": "2026-11-28T16:00:00Z"},
            {"run": 1, "estimatedFinishTime": "2026-11-28T16:00:00Z"},
        ),
        ({"run": 1, "published": {"modelUri": "s3://x/"}, "gate": {"passed": True}}, {"run": 1}),  # unknown keys
        (
            {"run": 1, "tracking": {"mlflow": {"runId": "r1", "url": "x" * 300, "extra": 1}, "other": {}}},
            {"run": 1, "tracking": {"mlflow": {"runId": "r1"}}},
        ),
        ({"stage": "training", "step": 3}, None),  # no run: not a report
        ({"run": 0}, None),
        (["run", 1], None),
    ],
)
def test_progress_keeps_known_keys_with_bounded_values_only(raw: Any, shown: dict[str, Any] | None) -> None:
    assert validated(raw) == shown


def _config_map(text: str, uid: str = OWNER.uid) -> dict[str, Any]:
    body = progress_config_map(OWNER)
    body["metadata"]["ownerReferences"][0]["uid"] = uid
    return {**body, "data": {"progress.json": text}}


def test_a_report_counts_only_from_the_operators_own_config_map_and_within_size() -> None:
    text = json.dumps({"run": 2, "stage": "training", "step": 4, "loss": float("nan")})  # NaN: JSON's extension
    assert report_in(_config_map(text), OWNER.uid) == {"run": 2, "stage": "training", "step": 4}
    assert report_in(_config_map(text, uid="someone-else"), OWNER.uid) is None  # not the one the operator made
    padded = json.dumps({"run": 2, "step": 4, "pad": "x" * MAX_DOCUMENT_BYTES})
    assert report_in(_config_map(padded), OWNER.uid) is None
    assert report_in(_config_map("{not json"), OWNER.uid) is None
    assert report_in(_config_map("[" * 5000 + "]" * 5000), OWNER.uid) is None
    assert report_in(None, OWNER.uid) is None


def test_status_progress_is_the_current_runs_report_else_what_it_showed_checked_again() -> None:
    report = {"run": 2, "step": 4}
    assert progress_of(2, report, {"run": 2, "step": 1}) == report
    assert progress_of(3, report, {"run": 2, "step": 1}) == {"run": 2, "step": 1}  # an older run's report waits
    assert progress_of(2, None, {"run": 2, "step": -1, "evil": "x"}) == {"run": 2}
    assert progress_of(2, None, None) is None


def test_the_pass_copies_the_watched_progress_into_status_with_no_timer() -> None:
    s = spec()
    job, pod = _training()
    status = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    report = {"run": 1, "stage": "evaluating", "step": 10, "totalSteps": 10}
    p = plan(_snap(s, status, jobs=[job], pods=[pod], progress=report), SETTINGS)
    assert p.status["progress"] == report and p.status["phase"] == "Evaluating"
    assert p.requeue_after is None  # the ConfigMap is watched: its next change queues the next pass
    done_job, done_pod = _done(1, 1.0)
    after = plan(_snap(s, p.status, jobs=[done_job], pods=[done_pod], progress=report), SETTINGS)
    assert after.status["progress"] == report and after.requeue_after is None


def test_a_progress_configmap_event_files_the_checked_report_and_queues_its_owner_once() -> None:
    from finetune_operator.core.store import Store
    from finetune_operator.finetunejob.registration import CONTROLLER

    store = Store()
    loop = type("Loop", (), {"store": store})()
    watch = next(w for w in CONTROLLER.watches if w.resource.plural == "configmaps")
    assert watch.selector == "finetune.dev/job-uid,finetune.dev/component in (trainer-progress)"
    owner = {"metadata": {"namespace": "ns", "name": "a", "uid": "u1", "resourceVersion": "1"}, "spec": {}}
    key = store.put_body(owner)
    ref = {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "a", "uid": "u1", "controller": True}
    document = {"run": 1, "step": 5, "evil": "x"}
    config_map = {
        "metadata": {"namespace": "ns", "name": "a-progress", "ownerReferences": [ref]},
        "data": {"progress.json": json.dumps(document)},
    }
    assert watch.observe(loop, "MODIFIED", config_map) == [key]
    view = store.view(key)
    assert view is not None and view.progress == {"run": 1, "step": 5}  # checked: the unknown key dropped
    assert watch.observe(loop, "MODIFIED", config_map) == []  # the same report: no pass
    forged = {**config_map, "metadata": {**config_map["metadata"], "ownerReferences": [{**ref, "uid": "u2"}]}}
    assert watch.observe(loop, "MODIFIED", forged) == []  # names another owner, which is not in memory
    assert watch.observe(loop, "DELETED", config_map) == [key] and store.progress_entries() == 1  # the forged one
    assert store.prune() == 0 and store.prune() == 1 and store.progress_entries() == 0  # pruned like any orphan
    store.put_progress("ns", "u1", {"run": 1})
    store.forget_body("ns", "a", "u1")
    assert store.progress_entries() == 0
