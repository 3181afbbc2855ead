"""spec.tracking: the rendered trainer config and pod env (credentials by secretKeyRef only), status.tracking and
the TrackingDegraded condition and event from the trainer's progress and termination message."""

from __future__ import annotations

import json
from typing import Any

from finetune_operator.api.finetunejob import FineTuneJobSpec, training_spec_hash
from finetune_operator.builders.trainer_config import trainer_config_map
from finetune_operator.builders.training import training_job, validation_job
from finetune_operator.core.observed import PodObs, parse_termination_message
from finetune_operator.core.settings import Settings
from finetune_operator.finetunejob.controller import merge_patch
from finetune_operator.finetunejob.plan import plan
from finetune_trainer.config import parse_config

from .support import OWNER, assert_golden, spec
from .test_finetunejob_plan import SETTINGS, _done, _job, _snap

TRACKING = {"mlflow": {"trackingUri": "http://mlflow.mlops.svc:5000", "credentialsSecret": "mlflow-creds"}}
SECRET_KEYS = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
RUN = {"runId": "abc123", "experimentId": "7", "url": "http://mlflow.mlops.svc:5000/#/experiments/7/runs/abc123"}
DOWN = {"reason": "TrackerUnreachable", "message": "connecting at http://mlflow.mlops.svc:5000: ConnectionError"}


def _env(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def test_the_trainer_config_names_the_tracker_but_not_the_secret() -> None:
    s = spec(tracking=TRACKING)
    config_map = trainer_config_map(s, OWNER, 2)
    document = json.loads(config_map["data"]["config.json"])
    assert document["tracking"] == {
        "mlflow": {"trackingUri": "http://mlflow.mlops.svc:5000", "experiment": "team-a/support-bot"}
    }
    assert "mlflow-creds" not in json.dumps(config_map)
    assert parse_config(document).tracking.mlflow is not None  # the trainer accepts what the operator renders
    named = spec(tracking={"mlflow": {"trackingUri": "https://mlflow.example", "experiment": "chatbots"}})
    assert json.loads(trainer_config_map(named, OWNER, 1)["data"]["config.json"])["tracking"]["mlflow"] == {
        "trackingUri": "https://mlflow.example",
        "experiment": "chatbots",
    }
    assert "tracking" not in json.loads(trainer_config_map(spec(), OWNER, 1)["data"]["config.json"])


def test_training_pods_get_the_credentials_by_secret_key_ref_and_the_check_does_not() -> None:
    s = spec(tracking=TRACKING)
    env = {e["name"]: e for e in _env(training_job(s, OWNER, 2, training_spec_hash(s), SETTINGS))}
    for key in SECRET_KEYS:
        assert env[key] == {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": "mlflow-creds", "key": key, "optional": True}},
        }
    assert env["FTO_MLFLOW_CREDENTIALS_SECRET"] == {"name": "FTO_MLFLOW_CREDENTIALS_SECRET", "value": "mlflow-creds"}
    checker = {e["name"] for e in _env(validation_job(s, OWNER, 2, training_spec_hash(s), SETTINGS))}
    assert not checker & (SECRET_KEYS | {"FTO_MLFLOW_CREDENTIALS_SECRET"}) and "AWS_ACCESS_KEY_ID" in checker
    without = {e["name"] for e in _env(training_job(spec(), OWNER, 2, "h", SETTINGS))}
    assert not without & SECRET_KEYS
    no_secret = spec(tracking={"mlflow": {"trackingUri": "http://mlflow:5000"}})
    assert not {e["name"] for e in _env(training_job(no_secret, OWNER, 2, "h", SETTINGS))} & SECRET_KEYS


def test_tracked_job_and_config_match_golden() -> None:
    s = spec(tracking=TRACKING)
    assert_golden("tracking/trainer-configmap.yaml", trainer_config_map(s, OWNER, 2))
    assert_golden("tracking/job.yaml", training_job(s, OWNER, 2, training_spec_hash(s), Settings(trainer_image="t")))


def test_the_termination_message_carries_tracking() -> None:
    report = parse_termination_message(json.dumps({"code": "Succeeded", "message": "m", "tracking": {"mlflow": RUN}}))
    assert report is not None and report.tracking == {"mlflow": RUN}
    assert parse_termination_message('{"code": "Succeeded", "tracking": "junk"}').tracking == {}  # type: ignore[union-attr]


def _running(s: FineTuneJobSpec, status: dict[str, Any]) -> Any:
    job, pod = _job("support-bot-r1", 1, active=1, ready=1), PodObs("p", 1, phase="Running")
    return plan(_snap(s, status, jobs=[job], pods=[pod]), SETTINGS)


def _condition(status: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in status["conditions"] if c["type"] == "TrackingDegraded"), None)


def test_status_shows_the_mlflow_run_then_the_degradation_with_one_event() -> None:
    s = spec(tracking=TRACKING)
    base = {"run": 1, "trainingSpecHash": training_spec_hash(s)}
    before = _running(s, base)
    assert before.status["tracking"] is None and _condition(before.status)["reason"] == "NotStarted"  # type: ignore[index]

    progress = {"run": 1, "stage": "training", "step": 3, "tracking": {"mlflow": RUN, "tensorboard": "s3://x/"}}
    opened = _running(s, {**before.status, "progress": progress})
    assert opened.status["tracking"] == {"run": 1, "mlflow": RUN}
    condition = _condition(opened.status)
    assert condition is not None and condition["status"] == "False" and condition["reason"] == "Tracking"
    assert RUN["url"] in condition["message"] and not [e for e in opened.events if e.reason == "TrackingDegraded"]
    moved = {**progress, "step": 9}
    again = _running(s, {**opened.status, "progress": moved})
    assert merge_patch({**opened.status, "progress": moved}, again.status) == {}  # a step alone changes nothing else

    progress = {**progress, "tracking": {"mlflow": RUN, "degraded": DOWN}}
    degraded = _running(s, {**opened.status, "progress": progress})
    assert degraded.status["tracking"] == {"run": 1, "mlflow": RUN, "degraded": DOWN}
    condition = _condition(degraded.status)
    assert condition is not None and condition["status"] == "True" and condition["reason"] == "TrackerUnreachable"
    assert degraded.status["phase"] == "Training"  # training goes on
    events = [e for e in degraded.events if e.reason == "TrackingDegraded"]
    assert len(events) == 1 and events[0].type == "Warning" and "ConnectionError" in events[0].message
    later = _running(s, {**degraded.status, "progress": progress})
    assert not [e for e in later.events if e.reason == "TrackingDegraded"]  # said once


def test_a_finished_run_takes_tracking_from_its_termination_message() -> None:
    s = spec(tracking=TRACKING)
    job, pod = _done(1, 1.2)
    message = {"code": "Succeeded", "message": "ok", "metrics": {"test": {"loss": 1.2}}, "tracking": {"degraded": DOWN}}
    pod = PodObs(pod.name, 1, phase="Succeeded", exit_code=0, termination_message=json.dumps(message))
    p = plan(_snap(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)}, jobs=[job], pods=[pod]), SETTINGS)
    assert p.status["phase"] == "Succeeded" and p.status["tracking"] == {"run": 1, "degraded": DOWN}
    assert _condition(p.status)["status"] == "True"  # type: ignore[index]
    assert [e.reason for e in p.events] == ["Succeeded", "TrackingDegraded"]
    assert p.status["artifacts"]["tensorboard"] == "s3://artifacts/team-a/support-bot/run-1/tensorboard/"


def test_no_tracking_condition_without_spec_tracking() -> None:
    s = spec()
    p = _running(s, {"run": 1, "trainingSpecHash": training_spec_hash(s)})
    assert _condition(p.status) is None and p.status["tracking"] is None
