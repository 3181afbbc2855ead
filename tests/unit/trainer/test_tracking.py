"""Tracking's pure parts (metric and parameter names, URLs, scrubbing) and the MLflow tracker's degradation: a
client that fails once turns tracking off for the attempt, with the reason recorded and no secret logged."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from finetune_trainer.config import MlflowTarget, parse_config
from finetune_trainer.core.termination import termination_line
from finetune_trainer.training.mlflow_tracker import (
    MlflowTracker,
    _reason,
    final_metrics,
    params_of,
    run_url,
    scrub,
    step_metrics,
)
from finetune_trainer.training.progress import Reporter


def _config(**overrides: Any) -> Any:
    raw: dict[str, Any] = {
        "job": {"namespace": "team-a", "name": "bot", "uid": "u-1", "run": 3},
        "baseModel": {"uri": "s3://models/tiny/"},
        "dataset": {"train": {"uri": "s3://data/train.jsonl"}, "test": {"uri": "s3://data/test.jsonl"}},
        "output": {"uri": "s3://out/", "runUri": "s3://out/run-3/"},
        "tracking": {"mlflow": {"trackingUri": "http://mlflow:5000", "experiment": "team-a/bot"}},
    }
    raw.update(overrides)
    return parse_config(raw)


def test_trainer_logs_become_tracking_metrics() -> None:
    logs = {"loss": 1.5, "learning_rate": 1e-4, "grad_norm": 0.7, "epoch": 0.5, "note": "x", "flag": True}
    assert step_metrics(logs) == {"train_loss": 1.5, "learning_rate": 1e-4, "grad_norm": 0.7, "epoch": 0.5}
    evaluation = {"eval_loss": 1.1, "eval_runtime": 3.0, "eval_samples_per_second": 9.0, "epoch": 1.0}
    assert step_metrics(evaluation) == {"validation_loss": 1.1, "epoch": 1.0}
    metrics = {"test": {"loss": 1.0, "perplexity": 2.7}, "validation": {"loss": 1.2}}
    assert final_metrics(metrics, {"test": {"loss": 3.0}}) == {
        "test_loss": 1.0,
        "test_perplexity": 2.7,
        "validation_loss": 1.2,
        "base_test_loss": 3.0,
    }


def test_parameters_are_the_resolved_config_and_run_time_choices() -> None:
    params = params_of(_config(), {"precision": "bf16", "totalSteps": 40, "processes": 2})
    assert params["baseModel.uri"] == "s3://models/tiny/" and params["method.type"] == "lora"
    assert (
        params["method.lora.targetModules"] == '["all-linear"]' and params["hyperparameters.learningRate"] == "0.0002"
    )
    assert (
        params["dataset.train.uri"] == "s3://data/train.jsonl" and params["dataset.test.uri"] == "s3://data/test.jsonl"
    )
    assert "dataset.validation.uri" not in params and "hyperparameters.maxSteps" not in params  # nulls left out
    assert params["precision"] == "bf16" and params["totalSteps"] == "40" and params["processes"] == "2"
    assert all(isinstance(v, str) for v in params.values())


def test_run_url_and_scrub_leave_credentials_out() -> None:
    assert (
        run_url("https://u:pw@mlflow.example/base/", "4", "r1") == "https://mlflow.example/base/#/experiments/4/runs/r1"
    )
    env = {"MLFLOW_TRACKING_PASSWORD": "hunter2", "MLFLOW_TRACKING_TOKEN": "tok-9"}
    text = "GET http://me:hunter2@host/api failed with tok-9 and hunter2"
    assert scrub(text, env) == "GET http://***@host/api failed with *** and ***"


def test_the_tracking_uri_must_be_http() -> None:
    with pytest.raises(ValueError, match="http"):
        MlflowTarget(tracking_uri="file:///tmp/mlruns", experiment="x")


class _Refusing:
    """An MLflow client whose server cannot be reached: counts the calls that got through to it."""

    def __init__(self) -> None:
        self.calls = 0

    def get_experiment_by_name(self, name: str) -> Any:
        self.calls += 1
        raise ConnectionError(
            "Max retries exceeded with url: /api/2.0/mlflow/experiments/get-by-name (password hunter2)"
        )


def test_a_failing_tracker_degrades_once_and_stops_calling(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2")
    cfg = _config()
    client = _Refusing()
    tracker = MlflowTracker(cfg.tracking.mlflow, cfg, client)
    with caplog.at_level(logging.WARNING):
        tracker.start(None)
        tracker.log_params({"a": "1"})
        tracker.log_metrics({"train_loss": 1.0}, 1)
        tracker.log_artifact("report.html", b"<html>")
        tracker.finish("FINISHED")
    assert client.calls == 1
    summary = tracker.summary()
    assert summary["degraded"]["reason"] == "TrackerUnreachable" and "mlflow" not in summary
    assert "starting the run at http://mlflow:5000" in summary["degraded"]["message"]
    assert "hunter2" not in json.dumps(summary) and "hunter2" not in caplog.text
    assert caplog.text.count("MLflow tracking degraded") == 1


def test_progress_sends_tracking_news_at_once_and_the_termination_line_carries_it() -> None:
    sent: list[dict[str, Any]] = []
    clock = iter([100.0, 101.0, 102.0, 103.0])
    reporter = Reporter(1, sent.append, clock=lambda: next(clock))
    state: dict[str, Any] = {"mlflow": {"runId": "r"}}
    reporter.tracking = lambda: dict(state)
    reporter.report("training", step=1)
    reporter.report("training", step=2)  # throttled: nothing new
    state["degraded"] = {"reason": "TrackerError", "message": "500"}
    reporter.report("training", step=3)  # news: sent although within min_interval
    assert [p["status"]["progress"]["step"] for p in sent] == [1, 3]
    assert sent[-1]["status"]["progress"]["tracking"]["degraded"]["reason"] == "TrackerError"
    line = json.loads(termination_line("Succeeded", "trained 3 steps", 1, {"test": {"loss": 1.0}}, state))
    assert line["tracking"] == state and line["metrics"] == {"test": {"loss": 1.0}}


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        # CI met this one: port 34015 holds the digits 401, and a refused connection was called unauthorized
        ("HTTPConnectionPool(host='127.0.0.1', port=34015): Max retries exceeded (Connection refused)",
         "TrackerUnreachable"),
        ("API request to http://127.0.0.1:4010/api failed: Failed to establish a new connection", "TrackerUnreachable"),
        ("API request to endpoint /api/2.0/mlflow/runs/create failed with error code 401 != 200",
         "TrackerUnauthorized"),
        ("Response: 403 Forbidden", "TrackerUnauthorized"),
        ("RESOURCE_DOES_NOT_EXIST: no such experiment 14015", "TrackerError"),
    ],
)  # fmt: skip
def test_the_degraded_reason_reads_status_codes_not_digits_in_ports(message: str, reason: str) -> None:
    assert _reason(RuntimeError(message)) == reason
