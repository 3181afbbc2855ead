"""Every bad input ends as a user error: the contract code, exit 42, and a message naming file/line/field.

Each case runs the real trainer entry point against the real S3 server; nothing is mocked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE

from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = pytest.mark.s3

Runner = Callable[[dict[str, Any]], TrainerResult]


def assert_user_error(result: TrainerResult, code: str, *fragments: str) -> None:
    assert result.exit_code == USER_ERROR_EXIT_CODE, result
    assert result.termination["code"] == code, result.termination
    for fragment in fragments:
        assert fragment in result.termination["message"], (fragment, result.termination["message"])


def test_malformed_line_names_file_and_line(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    body = b'{"prompt": "a", "completion": "b"}\n{"prompt": "c", "completion": "d"}\n{"prompt": "e", "compl\n'
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/train.jsonl", Body=body)
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("data/train.jsonl")))
    assert_user_error(result, "DatasetInvalid", f"{s3_bucket.uri('data/train.jsonl')} line 3", "invalid JSON")
    assert result.termination["run"] == 1


def test_missing_column_names_available_columns(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    uri = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", [{"question": "q", "answer": "a"}] * 20)
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, uri))
    assert_user_error(result, "DatasetInvalid", "line 1", "missing field 'prompt'", "available: answer, question")


def test_column_mapping_fixes_it(s3_bucket: Any, tiny_llama_uri: str) -> None:
    """The same data loads once `dataset.columns` maps the names (inputs only, no training)."""
    from pathlib import Path

    from finetune_trainer.config import parse_config
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.inputs import prepare

    uri = put_jsonl(
        s3_bucket.client,
        s3_bucket.name,
        "data/train.jsonl",
        [{"question": f"q{i}", "answer": " a"} for i in range(20)],
    )
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, uri)
    raw["dataset"]["columns"] = {"prompt": "question", "completion": "answer"}
    import os

    inputs = prepare(Storage(), parse_config(raw), Path(os.environ["FTO_WORK_DIR"]))
    assert (len(inputs.splits.train), len(inputs.splits.validation), len(inputs.splits.test)) == (16, 2, 2)
    assert len(inputs.tokenized["train"]) == 16


def test_empty_split(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(10))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/test.jsonl", Body=b"\n")
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["test"] = {"uri": s3_bucket.uri("data/test.jsonl")}
    result = run_trainer(raw)
    assert_user_error(result, "DatasetInvalid", "dataset.test", "empty split")


def test_unknown_label(s3_bucket: Any, run_trainer: Runner) -> None:
    records = [{"text": f"t{i}", "label": ["neg", "pos"][i % 2]} for i in range(20)]
    records[13]["label"] = "meh"
    uri = put_jsonl(s3_bucket.client, s3_bucket.name, "data/cls.jsonl", records)
    raw = trainer_config(s3_bucket.name, s3_bucket.uri("models/none/"), uri)
    raw["baseModel"] = {
        "uri": s3_bucket.uri("models/none/"),
        "task": "sequence-classification",
        "labels": ["neg", "pos"],
    }
    raw["dataset"]["schema"] = "classification"
    result = run_trainer(raw)
    assert_user_error(result, "DatasetInvalid", f"{uri} line 14", "unknown label 'meh'", "known labels: neg, pos")


def test_folder_that_is_not_a_model(s3_bucket: Any, run_trainer: Runner) -> None:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="models/notes/readme.txt", Body=b"hello")
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(20))
    result = run_trainer(trainer_config(s3_bucket.name, s3_bucket.uri("models/notes/"), train))
    assert_user_error(result, "ModelInvalid", s3_bucket.uri("models/notes/"), "no config.json", "readme.txt")


def test_empty_model_prefix(s3_bucket: Any, run_trainer: Runner) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(20))
    result = run_trainer(trainer_config(s3_bucket.name, s3_bucket.uri("models/absent/"), train))
    assert_user_error(result, "ModelNotFound", "baseModel.uri", s3_bucket.uri("models/absent/"))


def test_wrong_credentials(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(20))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "definitely-wrong")
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, train))
    assert_user_error(result, "StorageAccessDenied", s3_bucket.uri("data/train.jsonl"), "access denied")


def test_missing_bucket(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, "s3://no-such-bucket-fto/train.jsonl"))
    assert_user_error(result, "StorageNotFound", "dataset.train", "bucket 'no-such-bucket-fto' does not exist")


def test_missing_key(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    result = run_trainer(trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("data/missing.jsonl")))
    assert_user_error(result, "DatasetNotFound", "dataset.train", s3_bucket.uri("data/missing.jsonl"))


def test_invalid_config(s3_bucket: Any, run_trainer: Runner) -> None:
    raw = trainer_config(s3_bucket.name, s3_bucket.uri("m/"), s3_bucket.uri("d.jsonl"))
    raw["hyperparameters"]["learningRate"] = 0
    raw["dataset"]["maxSeqLen"] = 5
    result = run_trainer(raw)
    assert_user_error(result, "ConfigInvalid", "hyperparameters.learningRate", "dataset.maxSeqLen")


def test_qlora_without_gpu(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: QLoRA is supported here")
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(20))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["method"] = {"type": "qlora"}
    result = run_trainer(raw)
    assert_user_error(result, "UnsupportedHardware", "qlora needs a CUDA GPU")


def test_a_run_folder_of_another_finetunejob_is_neither_resumed_nor_overwritten(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    """A FineTuneJob deleted and re-created under the same name (or two sharing output.uri) finds run-1/ written
    by the other one: its checkpoints are another model's and its model someone's work, so the run stops with a
    user error that names the folder and the owner, and leaves the folder as it was."""
    import json

    uri = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", arithmetic_records(40))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, uri)
    theirs = {**raw, "job": {**raw["job"], "uid": "u-before", "name": "old-bot"}}
    key = raw["output"]["runUri"].removeprefix(f"s3://{s3_bucket.name}/") + "trainer_config.json"
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=json.dumps(theirs).encode())
    result = run_trainer(raw)
    assert_user_error(result, "ConfigInvalid", raw["output"]["runUri"], "another FineTuneJob", "old-bot", "u-before")
    kept = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    assert kept["job"]["uid"] == "u-before"
