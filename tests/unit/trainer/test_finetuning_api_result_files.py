"""A succeeded job's result file (finetuning_api/result_files.py): its id names the job and the run, the CSV has
OpenAI's columns built from the run's own Trainer log, and nothing of its place comes from the status."""

from __future__ import annotations

import copy
import csv
import io
from typing import Any

import pytest
from finetune_trainer.finetuning_api import job_view, jobs, result_files
from finetune_trainer.finetuning_api.catalog import parse_catalog
from openai.types import FileObject
from openai.types.fine_tuning import FineTuningJob

NAME = "ftjob-abcdefghijklmnopqrst"
CATALOG = parse_catalog([{"name": "tiny", "baseModel": "s3://models/tiny/", "checkpointSteps": 5,
                          "validationSteps": 3}])  # fmt: skip


def _job(status: dict[str, Any], validation: bool = True, bucket: str = "files") -> dict[str, Any]:
    target = jobs.JobTarget(
        namespace="team-a",
        name=NAME,
        training_uri=f"s3://{bucket}/team-a/files/file-train.jsonl",
        validation_uri=f"s3://{bucket}/team-a/files/file-valid.jsonl" if validation else None,
        output_uri=f"s3://{bucket}/{result_files.job_folder('team-a', NAME)}",
        storage={"credentialsSecret": "finetune-storage"},
    )
    body = {"model": "tiny", "training_file": "file-" + "0" * 24}
    if validation:
        body["validation_file"] = "file-" + "1" * 24
    obj = copy.deepcopy(jobs.job_manifest(jobs.parse_create(body), CATALOG.require("tiny"), target))
    obj["metadata"].update({"uid": "u1", "creationTimestamp": "2026-12-06T20:00:00Z"})
    obj["status"] = copy.deepcopy(status)
    return obj


SERVING = {"phase": "Serving", "run": 2, "endpoint": {"url": f"http://{NAME}.team-a.svc:8000/v1", "run": 2}}


def test_ids_name_the_job_and_run_and_nothing_else() -> None:
    file_id = result_files.result_file_id(NAME, 2)
    assert file_id == f"file-results-{NAME}-run-2"
    assert result_files.parse_result_file_id(file_id) == (NAME, 2)
    for bad in (f"file-results-{NAME}-run-0", f"file-results-{NAME}-run-x", "file-results-ftjob-x-run-1",
                f"file-results-{NAME}-run-1/../x", "file-" + "0" * 24, ""):  # fmt: skip
        assert result_files.parse_result_file_id(bad) is None, bad
    assert result_files.metrics_key("team-a", NAME, 2) == f"team-a/jobs/{NAME}/run-2/metrics.json"


def test_a_succeeded_job_lists_its_runs_result_file() -> None:
    view = job_view.to_openai_job(_job(SERVING))
    assert view["result_files"] == [f"file-results-{NAME}-run-2"]
    FineTuningJob.model_validate(view)


@pytest.mark.parametrize(
    "change",
    [
        lambda obj: obj["status"].update(phase="Training"),  # not succeeded
        lambda obj: obj["status"].update(run="2"),  # not a number
        lambda obj: obj["status"].update(run=True),
        lambda obj: obj["status"].pop("run"),
        lambda obj: obj["spec"]["output"].update(uri="s3://files/team-b/jobs/x/"),  # moved by a kubectl edit
        lambda obj: obj["spec"]["output"].update(uri=f"s3://files/team-a/jobs/{NAME}/run-1/"),
    ],
)
def test_no_result_file_where_the_status_or_spec_do_not_say_it_plainly(change: Any) -> None:
    obj = _job(SERVING)
    change(obj)
    assert job_view.to_openai_job(obj)["result_files"] == []
    assert result_files.offered_run(obj, "files") is None or obj["status"].get("phase") == "Training"


def test_the_files_bucket_must_be_the_services() -> None:
    obj = _job(SERVING, bucket="other")
    assert result_files.offered_run(obj) == 2
    assert result_files.offered_run(obj, "files") is None
    assert result_files.offered_run(obj, "other") == 2


def test_the_csv_has_openais_columns_one_row_a_step() -> None:
    history = [
        {"loss": 2.5, "learning_rate": 0.01, "epoch": 0.5, "step": 1},
        {"loss": 2.25, "mean_token_accuracy": 0.25, "step": 2},
        {"eval_loss": 2.4, "eval_runtime": 0.1, "step": 2},
        {"loss": float("nan"), "step": 3},  # a diverged loss is an empty cell, not "nan"
        {"eval_loss": 2.0, "eval_mean_token_accuracy": 0.5, "step": 4},
        {"train_runtime": 3.0, "train_loss": 2.3, "step": 4},  # the Trainer's summary: not a step's metrics
        {"loss": 1.0},  # no step
        "not an entry",
    ]
    text = result_files.step_metrics_csv({"run": 2, "history": history}).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy"
    assert rows == [
        {"step": "1", "train_loss": "2.5", "train_accuracy": "", "valid_loss": "", "valid_mean_token_accuracy": ""},
        {"step": "2", "train_loss": "2.25", "train_accuracy": "0.25", "valid_loss": "2.4",
         "valid_mean_token_accuracy": ""},
        {"step": "4", "train_loss": "", "train_accuracy": "", "valid_loss": "2.0", "valid_mean_token_accuracy": "0.5"},
    ]  # fmt: skip
    assert result_files.step_metrics_csv({}).decode() == text.splitlines()[0] + "\n"
    assert result_files.step_metrics_csv([1, 2]).decode() == text.splitlines()[0] + "\n"


def test_the_described_file_parses_as_openais_file_object() -> None:
    described = {"id": result_files.result_file_id(NAME, 1), "object": "file", "bytes": 10, "created_at": 1,
                 "filename": result_files.FILENAME, "purpose": result_files.PURPOSE, "status": "processed",
                 "status_details": None, "expires_at": None}  # fmt: skip
    assert FileObject.model_validate(described).purpose == "fine-tune-results"


def test_the_catalogs_intervals_set_checkpoints_and_validation_during_training() -> None:
    spec = _job(SERVING)["spec"]
    assert spec["checkpointing"] == {"intervalSteps": 5}
    assert spec["evaluation"] == {"intervalSteps": 3}
    without_validation = _job(SERVING, validation=False)["spec"]
    assert without_validation["checkpointing"] == {"intervalSteps": 5} and "evaluation" not in without_validation
    plain = jobs.job_manifest(
        jobs.parse_create({"model": "m", "training_file": "file-" + "0" * 24}),
        parse_catalog([{"name": "m", "baseModel": "s3://m/"}]).require("m"),
        jobs.JobTarget("team-a", NAME, "s3://f/x.jsonl", "s3://f/y.jsonl", "s3://f/o/", {}),
    )["spec"]
    assert "checkpointing" not in plain and "evaluation" not in plain
