"""Tracking against a real MLflow tracking server (PyPI `mlflow`, sqlite store, proxied artifacts) and the real
S3 server: a tracked run read back through the MLflow client, its TensorBoard event file parsed from S3, a second
attempt of the same run continuing the same MLflow run, and an unreachable tracker that does not stop training.

One server for the module (it takes tens of seconds to start on a busy machine); each test has its own experiment.
"""

from __future__ import annotations

import json
import logging
import struct
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.mlflow_server import mlflow_server as start_mlflow_server
from tests.support.ports import free_port
from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3, pytest.mark.slow]

Runner = Callable[[dict[str, Any]], TrainerResult]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mlflow server` on a free local port, ready (GET /health) before the first test; stopped after the last."""
    with start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def _read(s3_bucket: Any, key: str) -> bytes:
    return bytes(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())


def _keys(s3_bucket: Any, prefix: str) -> list[str]:
    listing = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix=prefix)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def _events(data: bytes) -> list[Any]:
    """The records of a TensorBoard event file (TFRecord framing: length, crc, payload, crc), as Event protos."""
    from tensorboardX.proto.event_pb2 import Event

    events, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        events.append(Event.FromString(data[offset + 12 : offset + 12 + length]))
        offset += 12 + length + 4
    return events


def _scalars(s3_bucket: Any, prefix: str) -> dict[str, dict[int, float]]:
    """Every scalar of every event file under `prefix`: tag -> {step: value}."""
    out: dict[str, dict[int, float]] = {}
    for key in _keys(s3_bucket, prefix):
        for event in _events(_read(s3_bucket, key)):
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    out.setdefault(value.tag, {})[event.step] = value.simple_value
    return out


def _config(s3_bucket: Any, model_uri: str, tracking_uri: str, experiment: str) -> dict[str, Any]:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(96))
    raw = trainer_config(s3_bucket.name, model_uri, train)
    raw["evaluation"] = {"compareBaseModel": True}
    raw["tracking"] = {"mlflow": {"trackingUri": tracking_uri, "experiment": experiment}}
    return raw


def test_a_tracked_run_is_in_mlflow_and_its_tensorboard_file_in_s3(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner, mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    experiment = f"exp-{uuid.uuid4().hex[:8]}"
    raw = _config(s3_bucket, tiny_llama_uri, mlflow_server, experiment)
    result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    tracking = result.termination["tracking"]
    assert "degraded" not in tracking, tracking
    run_id = tracking["mlflow"]["runId"]
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert tracking["mlflow"]["url"] == f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"

    tags = run.data.tags
    assert {k: tags[k] for k in tags if k.startswith("finetune.dev/")} == {
        "finetune.dev/namespace": "team-a",
        "finetune.dev/name": "test-job",
        "finetune.dev/run": "1",
        "finetune.dev/uid": "u-1",
    }
    assert run.info.run_name == "test-job-run-1"
    params = run.data.params
    assert params["baseModel.uri"] == tiny_llama_uri and params["method.type"] == "lora"
    assert params["method.lora.rank"] == "4" and params["hyperparameters.learningRate"] == "0.01"
    assert params["hyperparameters.maxSteps"] == "10" and params["dataset.train.uri"] == raw["dataset"]["train"]["uri"]
    assert params["precision"] == "fp32" and params["totalSteps"] == "10" and params["processes"] == "1"

    history = client.get_metric_history(run_id, "train_loss")
    assert sorted(m.step for m in history) == list(range(1, 11))  # logged every step (10 steps: every 1)
    assert {m.step for m in client.get_metric_history(run_id, "learning_rate")} == set(range(1, 11))
    assert client.get_metric_history(run_id, "grad_norm")
    metrics = result.termination["metrics"]
    assert run.data.metrics["test_loss"] == pytest.approx(metrics["test"]["loss"])
    assert run.data.metrics["validation_perplexity"] == pytest.approx(metrics["validation"]["perplexity"])
    assert [m.step for m in client.get_metric_history(run_id, "test_loss")] == [10]
    assert run.data.metrics["base_test_loss"] > run.data.metrics["test_loss"]

    names = {item.path for item in client.list_artifacts(run_id)}
    assert {"report.html", "metrics.json", "loss_curve.png", "trainer_config.json", "memory_plan.json"} <= names
    folder = Path(client.download_artifacts(run_id, "", str(tmp_path / "artifacts")))
    assert (folder / "report.html").read_bytes() == _read(s3_bucket, "out/run-1/report.html")
    assert json.loads((folder / "metrics.json").read_text())["metrics"] == metrics
    plan = json.loads((folder / "memory_plan.json").read_text())
    assert plan["accelerator"] == "cpu" and plan["fits"] and plan["estimateBytes"] > 0
    assert run.info.run_id in _read(s3_bucket, "out/run-1/report.html").decode()  # the report links the run

    assert json.loads(_read(s3_bucket, "out/run-1/tracking.json"))["mlflow"]["runId"] == run_id
    assert tracking["tensorboard"] == f"s3://{s3_bucket.name}/out/run-1/tensorboard/"
    scalars = _scalars(s3_bucket, "out/run-1/tensorboard/")
    assert sorted(scalars["train/loss"]) == list(range(1, 11))
    assert scalars["train/loss"] == pytest.approx({m.step: m.value for m in history}, rel=1e-5)
    assert scalars["eval/test_loss"] == {10: pytest.approx(metrics["test"]["loss"], rel=1e-5)}

    # Another attempt of the same run (as after a preemption) continues the same MLflow run, found through
    # run-N/tracking.json, and without it by the run's tags.
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="out/run-1/tracking.json")
    again = run_trainer(raw)
    assert again.exit_code == 0, again.termination
    assert again.termination["tracking"]["mlflow"]["runId"] == run_id
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert json.loads(_read(s3_bucket, "out/run-1/tracking.json"))["mlflow"]["runId"] == run_id


def test_an_unreachable_tracker_does_not_stop_training(
    s3_bucket: Any,
    tiny_llama_uri: str,
    run_trainer: Runner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    password = "pw-" + uuid.uuid4().hex
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    closed = f"http://someone:{password}@127.0.0.1:{free_port()}"  # nothing listens there
    raw = _config(s3_bucket, tiny_llama_uri, closed, "never-reached")
    raw["evaluation"] = {"compareBaseModel": False}
    with caplog.at_level(logging.INFO):
        result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    assert result.termination["message"] == "trained 10 steps" and "test" in result.termination["metrics"]
    tracking = result.termination["tracking"]
    assert tracking["degraded"]["reason"] == "TrackerUnreachable", tracking
    assert "127.0.0.1" in tracking["degraded"]["message"] and "mlflow" not in tracking
    assert password not in json.dumps(result.termination) and password not in caplog.text
    assert "MLflow tracking degraded" in caplog.text
    assert sorted(_scalars(s3_bucket, "out/run-1/tensorboard/")["train/loss"]) == list(range(1, 11))
    assert _keys(s3_bucket, "out/run-1/model/") and not _keys(s3_bucket, "out/run-1/tracking.json")


def test_the_tracker_continues_a_run_keeps_its_parameters_and_replaces_a_deleted_one(
    s3_bucket: Any, mlflow_server: str
) -> None:
    """Against the real server, without training: what a later attempt of a run finds in MLflow."""
    from finetune_trainer.config import parse_config
    from finetune_trainer.training.mlflow_tracker import MlflowTracker
    from mlflow import MlflowClient

    raw = trainer_config(s3_bucket.name, f"s3://{s3_bucket.name}/models/x/", f"s3://{s3_bucket.name}/data/t.jsonl")
    raw["tracking"] = {"mlflow": {"trackingUri": mlflow_server, "experiment": f"exp-{uuid.uuid4().hex[:8]}"}}
    cfg = parse_config(raw)
    client = MlflowClient(tracking_uri=mlflow_server)

    def attempt(recorded: str | None, params: dict[str, str]) -> MlflowTracker:
        tracker = MlflowTracker(cfg.tracking.mlflow, cfg)  # type: ignore[arg-type]
        tracker.start(recorded)
        tracker.log_params(params)
        assert tracker.degraded is None, tracker.degraded
        return tracker

    first = attempt(None, {"hyperparameters.batchSize": "8"})
    tracker = attempt(first.run_id, {"hyperparameters.batchSize": "4", "totalSteps": "10"})  # e.g. another GPU
    assert tracker.run_id == first.run_id and tracker.resumed
    assert client.get_run(first.run_id).data.params == {"hyperparameters.batchSize": "8", "totalSteps": "10"}

    missing = attempt("0" * 32, {})  # the recorded run is gone from the server: a new one, not a failure
    assert missing.run_id not in (None, first.run_id) and not missing.resumed
    client.delete_run(missing.run_id)
    client.delete_run(first.run_id)
    replaced = attempt(first.run_id, {})  # deleted in the UI: neither continued nor found by its tags
    assert replaced.run_id not in (first.run_id, missing.run_id) and not replaced.resumed
