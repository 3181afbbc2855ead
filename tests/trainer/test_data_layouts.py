"""Datasets as users bring them (issue 25), through the real trainer and the real S3 server.

A Hugging Face style folder (`train.jsonl`, `validation.jsonl`, `test.jsonl`) given as `dataset.train` yields
its three splits, and the audit files under `run-N/split/` prove that no held-out record was trained on;
gzip-compressed files are read and an unsupported compression is refused by name; text that is not UTF-8 is
refused at the line of its first bad byte with the likely encoding; the small-split rule is reported and too
few training records are refused; near-copies of training records in the test split are counted and, above the
overlap limit, refused.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE

from tests.trainer.builders import put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = pytest.mark.s3

Runner = Callable[[dict[str, Any]], TrainerResult]
Validator = Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, Any] | None]]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def records(start: int, count: int) -> list[dict[str, str]]:
    """Distinct prompt-completion records (no two are near-copies: each names its own order number)."""
    out = []
    for i in range(start, start + count):
        a, b = i % 6, (i * 7) % 5
        out.append(
            {"prompt": f"order {i}: what is {NUMBERS[a]} and {NUMBERS[b]} ?", "completion": f" {NUMBERS[a + b]}"}
        )
    return out


def read_json(s3_bucket: Any, key: str) -> Any:
    return json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())


def read_lines(s3_bucket: Any, key: str) -> list[dict[str, Any]]:
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


def put(s3_bucket: Any, key: str, body: bytes) -> str:
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=body)
    return str(s3_bucket.uri(key))


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def assert_refused(code: int, termination: dict[str, Any], *fragments: str) -> None:
    assert code == USER_ERROR_EXIT_CODE and termination["code"] == "DatasetInvalid", termination
    for fragment in fragments:
        assert fragment in termination["message"], (fragment, termination["message"])


@pytest.fixture
def run_validate(tmp_path: Path) -> Validator:
    """`python -m finetune_trainer validate` in this process: exit code, termination message, summary file."""
    from finetune_trainer.cli import main

    def run(config: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        path, output = tmp_path / "validate-config.json", tmp_path / "summary.json"
        path.write_text(json.dumps(config))
        output.unlink(missing_ok=True)
        code = main(["validate", "--config", str(path), "--output", str(output)])
        termination = json.loads((tmp_path / "termination-log").read_text())
        return code, termination, json.loads(output.read_text()) if output.exists() else None

    return run


# --- a folder named by split ------------------------------------------------------------------------------


def test_hf_style_folder_yields_its_three_splits_and_no_held_out_record_is_trained_on(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    train, validation, test = records(0, 40), records(100, 10), records(200, 10)
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        put_jsonl(s3_bucket.client, s3_bucket.name, f"support/{name}.jsonl", rows)
    put(s3_bucket, "support/README.md", b"# a dataset card")  # a dataset repository's metadata, not data
    put(s3_bucket, "support/dataset_infos.json", b'{"default": {"description": "support questions"}}')
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("support/"))
    raw["hyperparameters"]["maxSteps"] = 2
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination

    report = read_json(s3_bucket, "out/run-1/split/dataset.json")
    assert report["records"] == {"train": 40, "validation": 10, "test": 10}
    assert report["files"] == {
        name: [s3_bucket.uri(f"support/{name}.jsonl")] for name in ("train", "validation", "test")
    }
    assert report["splitSources"]["train"] == "dataset.train"
    for name in ("validation", "test"):
        assert report["splitSources"][name].startswith("file names in dataset.train (datasets' split words in file")
    assert report["splitRule"] == ""  # nothing was taken from train
    # the audit files: train is exactly train.jsonl, the held-out splits exactly their files
    assert read_lines(s3_bucket, "out/run-1/split/train.jsonl") == train
    assert read_lines(s3_bucket, "out/run-1/split/validation.jsonl") == validation
    assert read_lines(s3_bucket, "out/run-1/split/test.jsonl") == test
    assert read_json(s3_bucket, "out/run-1/metrics.json")["dataset"]["splitSources"] == report["splitSources"]


def test_folder_split_conflicting_with_an_explicit_split_is_refused_by_name(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    put_jsonl(s3_bucket.client, s3_bucket.name, "support/train.jsonl", records(0, 40))
    put_jsonl(s3_bucket.client, s3_bucket.name, "support/test.jsonl", records(100, 10))
    other = put_jsonl(s3_bucket.client, s3_bucket.name, "eval/holdout.jsonl", records(200, 10))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("support/"))
    raw["dataset"]["test"] = {"uri": other}
    result = run_trainer(raw)
    assert result.exit_code == USER_ERROR_EXIT_CODE, result.termination
    message = result.termination["message"]
    assert message.startswith("dataset.test is given, and dataset.train's folder "), message
    assert f"also holds {s3_bucket.uri('support/test.jsonl')}, named as the test split" in message

    raw["dataset"]["test"] = {"uri": s3_bucket.uri("support/test.jsonl")}  # the same file: no conflict
    raw["hyperparameters"]["maxSteps"] = 1
    assert run_trainer(raw).exit_code == 0


# --- compression ---------------------------------------------------------------------------------------------


def test_gzip_files_are_read_and_other_compressions_refused_by_name(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Validator
) -> None:
    rows = records(0, 40)
    uri = put(s3_bucket, "gz/train.jsonl.gz", gzip.compress(jsonl(rows)))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, uri)
    code, termination, summary = run_validate(raw)
    assert code == 0, termination
    assert summary is not None and sum(summary["records"].values()) == 40

    table = "prompt,completion\r\n" + "".join(f'"{r["prompt"]}",{r["completion"]}\r\n' for r in rows)
    csv_uri = put(s3_bucket, "gzcsv/train.csv.gz", gzip.compress(table.encode()))
    code, termination, summary = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, csv_uri))
    assert code == 0, termination
    assert summary is not None and sum(summary["records"].values()) == 40

    zst = put(s3_bucket, "zst/train.jsonl.zst", b"(\xb5/\xfd not really zstd")
    code, termination, _ = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, zst))
    assert_refused(code, termination, f"dataset.train: {zst} is zstd-compressed or an archive", "gzip (.gz)")
    assert "set dataset.format" not in termination["message"] and "UTF-8" not in termination["message"]


# --- encodings -----------------------------------------------------------------------------------------------


def test_cp1252_jsonl_and_csv_are_refused_at_the_line_of_the_first_bad_byte(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Validator
) -> None:
    rows = records(0, 2000)
    rows[1500]["prompt"] = "caf\xe9 au lait, tr\xe8s bien ?"  # line 1501 of the JSONL, 1502 of the CSV
    uri = put(s3_bucket, "enc/train.jsonl", jsonl(rows).decode().encode("cp1252"))
    code, termination, _ = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, uri))
    assert_refused(code, termination, f"{uri} line 1501: not UTF-8 text: byte 0xE9", "likely cp1252", "UTF-8")

    table = "prompt,completion\r\n" + "".join(f'"{r["prompt"]}",{r["completion"]}\r\n' for r in rows)
    csv_uri = put(s3_bucket, "enc/train.csv", table.encode("cp1252"))
    code, termination, _ = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, csv_uri))
    assert_refused(code, termination, f"{csv_uri} line 1502: not UTF-8 text: byte 0xE9", "likely cp1252")
    assert "café au lait" in termination["message"]  # how the line reads in the likely encoding


# --- the small-split rule -----------------------------------------------------------------------------------


def test_small_split_rule_is_reported_and_too_few_training_records_refused(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Validator
) -> None:
    uri = put_jsonl(s3_bucket.client, s3_bucket.name, "small/train.jsonl", records(0, 12))
    code, termination, summary = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, uri))
    assert code == 0, termination
    assert summary is not None and summary["records"] == {"train": 10, "validation": 1, "test": 1}
    assert summary["splitRule"] == "validation 0.1 of 12 = 1.2 -> 1; test 0.1 of 12 = 1.2 -> 1; train keeps 10"
    assert termination["summary"]["splitRule"] == summary["splitRule"]  # what status.validation shows

    put_jsonl(s3_bucket.client, s3_bucket.name, "small/train.jsonl", records(0, 3))
    code, termination, _ = run_validate(trainer_config(s3_bucket.name, tiny_llama_uri, uri))
    assert_refused(
        code,
        termination,
        "dataset.train: 1 record(s) to train on (validation 0.1 of 3 = 0.3 -> 1 (at least 1); test 0.1 of 3",
        "a run needs at least 8",
        "Add training records",
    )


# --- near-copies -------------------------------------------------------------------------------------------


def test_near_copies_of_training_records_are_counted_beside_exact_ones(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Validator
) -> None:
    train = [{"prompt": f"Customer {i} asks: where can I follow parcel number {i * 37}?", "completion": " track"}
             for i in range(60)]  # fmt: skip
    test = [dict(train[0], prompt="Hello! " + train[0]["prompt"]), *records(500, 19)]  # 1 near-copy in 20: 5%
    train_uri = put_jsonl(s3_bucket.client, s3_bucket.name, "near/train.jsonl", train)
    test_uri = put_jsonl(s3_bucket.client, s3_bucket.name, "near/eval/test.jsonl", test)
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train_uri)
    raw["dataset"]["test"] = {"uri": test_uri}
    raw["dataset"]["split"]["validation"] = 0.0  # every train record stays in train
    code, termination, summary = run_validate(raw)
    assert code == 0, termination
    assert summary is not None
    assert summary["overlapWithTrain"] == {"validation": 0, "test": 0}
    assert summary["nearOverlapWithTrain"] == {"validation": 0, "test": 1}
    assert summary["nearOverlapExamples"]["test"][0].startswith(f"{test_uri} line 1 ~ {train_uri} line 1 (")

    test = [*(dict(r, prompt="Hello! " + r["prompt"].lower()) for r in train[:3]), *records(500, 17)]  # 15%
    put_jsonl(s3_bucket.client, s3_bucket.name, "near/eval/test.jsonl", test)
    code, termination, _ = run_validate(raw)
    assert_refused(
        code,
        termination,
        "dataset.test: 0 of its 20 record(s) are also in the training data and 3 more nearly copy a training record",
        "more than 10%",
    )
