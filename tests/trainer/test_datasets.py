"""Datasets in the shapes people have, through the real trainer and the real S3 server (issue 17).

Records are written the way each format's own documentation shows them: OpenAI's chat fine-tuning JSONL
(`weight`, `name`, text parts, tool calls), Stanford Alpaca's instruction/input/output, ShareGPT's
from/value conversations, a Hugging Face dataset repository's parquet shards, a CSV saved by Excel.
Each either trains, or is refused with a message naming the file, the line and the fix; what the model
sees is checked on the tokenized batch the trainer built, decoded.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE
from finetune_trainer.data.tokenization import IGNORE_INDEX

from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config, upload_folder
from tests.trainer.conftest import TrainerResult

pytestmark = pytest.mark.s3

Runner = Callable[[dict[str, Any]], TrainerResult]
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def alpaca_records(count: int) -> list[dict[str, str]]:
    """Alpaca's shape: the numbers to add are in `input`, not in the instruction."""
    out = []
    for i, r in enumerate(arithmetic_records(count, seed=2)):
        words = r["prompt"].removeprefix("what is ").removesuffix(" ?")
        out.append({"instruction": "add the two numbers", "input": f"{words} #{i}", "output": r["completion"].strip()})
    return out


def openai_records(count: int) -> list[dict[str, Any]]:
    """OpenAI's chat fine-tuning format: a wrong first answer with weight 0, then the right one."""
    out = []
    for i, r in enumerate(arithmetic_records(count, seed=3)):
        right = r["completion"].strip()
        wrong = "zero" if right != "zero" else "one"
        out.append(
            {
                "messages": [
                    {"role": "system", "content": [{"type": "text", "text": "answer with one word"}]},
                    {"role": "user", "name": f"customer{i}", "content": r["prompt"]},
                    {"role": "assistant", "content": f"{wrong} wrongly", "weight": 0},
                    {"role": "user", "content": "again please"},
                    {"role": "assistant", "content": right, "weight": 1},
                ]
            }
        )
    return out


def sharegpt_records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "system": "answer with one word",
            "conversations": [
                {"from": "human", "value": r["prompt"]},
                {"from": "gpt", "value": r["completion"].strip()},
            ],
        }
        for r in arithmetic_records(count, seed=4)
    ]


def short_run(raw: dict[str, Any], steps: int = 2) -> dict[str, Any]:
    raw["hyperparameters"]["maxSteps"] = steps
    raw["checkpointing"] = {"intervalSteps": 100, "keep": 1}
    raw["dataset"]["maxSeqLength"] = 128
    return raw


def without_schema(raw: dict[str, Any]) -> dict[str, Any]:
    raw["dataset"].pop("schema")
    return raw


def read_json(s3_bucket: Any, key: str) -> Any:
    return json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())


def read_lines(s3_bucket: Any, key: str) -> list[dict[str, Any]]:
    body = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


def assert_user_error(result: TrainerResult, code: str, *fragments: str) -> None:
    assert result.exit_code == USER_ERROR_EXIT_CODE, result
    assert result.termination["code"] == code, result.termination
    for fragment in fragments:
        assert fragment in result.termination["message"], (fragment, result.termination["message"])


def prepared(raw: dict[str, Any]) -> Any:
    """The trainer's own inputs step (download, detect, split, tokenize) on this config, without training."""
    from finetune_trainer.config import parse_config
    from finetune_trainer.core.storage import Storage
    from finetune_trainer.training.inputs import prepare

    return prepare(Storage(), parse_config(raw), Path(os.environ["FTO_WORK_DIR"]))


def decoded_rows(inputs: Any, split: str = "train") -> list[tuple[str, str]]:
    """(everything the model reads, the part it learns) for each tokenized example, decoded."""
    rows = []
    for row in inputs.tokenized[split]:
        ids, labels = row["input_ids"], row["labels"]
        learned = [t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        rows.append((inputs.tokenizer.decode(ids), inputs.tokenizer.decode(learned)))
    return rows


@pytest.fixture
def run_validate(tmp_path: Path) -> Callable[[dict[str, Any]], tuple[int, dict[str, Any], dict[str, Any] | None]]:
    """`python -m finetune_trainer validate` in this process: exit code, termination message, summary file."""
    from finetune_trainer.cli import main

    def run(config: dict[str, Any], *placement: str) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        path, output = tmp_path / "validate-config.json", tmp_path / "summary.json"
        path.write_text(json.dumps(config))
        output.unlink(missing_ok=True)
        code = main(["validate", "--config", str(path), "--output", str(output), *placement])
        termination = json.loads((tmp_path / "termination-log").read_text())
        return code, termination, json.loads(output.read_text()) if output.exists() else None

    return run


# --- each format trains, with every field reaching the model --------------------------------------------


def test_alpaca_detected_trained_and_input_reaches_the_model(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/alpaca.jsonl", alpaca_records(40))
    raw = short_run(without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train)))

    inputs = prepared(raw)
    assert inputs.report.schema == "alpaca" and inputs.report.detected
    for read, learned in decoded_rows(inputs):
        assert "add the two numbers\n\n" in read and " #" in read  # the instruction, then Alpaca's `input`
        assert "#" not in learned and "add the two" not in learned  # only the output is learned

    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    dataset = read_json(s3_bucket, "out/run-1/metrics.json")["dataset"]
    assert dataset["schema"] == "alpaca" and dataset["schemaDetected"] is True
    assert "instruction, output" in dataset["schemaReason"]
    assert read_json(s3_bucket, "out/run-1/trainer_config.json")["dataset"]["schema"] == "alpaca"
    assert read_json(s3_bucket, "out/run-1/split/dataset.json")["records"]["train"] == 32


def test_openai_chat_weight_zero_is_masked_and_name_is_rendered(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/openai.jsonl", openai_records(40))
    raw = short_run(trainer_config(s3_bucket.name, tiny_llama_uri, train))
    raw["dataset"]["schema"] = "chat"

    inputs = prepared(raw)
    for read, learned in decoded_rows(inputs):
        assert "wrongly" in read and "wrongly" not in learned  # weight 0: in the input, never a target
        assert "<|user|> customer" in read  # `name`, as the (default) chat template renders it
        assert "answer with one word" in read  # content given as text parts
        assert learned.endswith("</s>\n") and len(learned.split()) == 1

    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination


def test_sharegpt_detected_and_trained(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/sharegpt.jsonl", sharegpt_records(40))
    raw = short_run(without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train)))
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    assert read_json(s3_bucket, "out/run-1/metrics.json")["dataset"]["schema"] == "sharegpt"


def test_name_is_refused_when_the_models_template_does_not_render_it(
    s3_bucket: Any, tiny_llama_folder: Path, tmp_path: Path, run_validate: Any
) -> None:
    folder = tmp_path / "blind-model"
    shutil.copytree(tiny_llama_folder, folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + eos_token }}{% endfor %}"
    )
    model = upload_folder(s3_bucket.client, s3_bucket.name, folder, "models/blind")
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/openai.jsonl", openai_records(20))
    code, termination, _ = run_validate(trainer_config(s3_bucket.name, model, train, dataset={
        "train": {"uri": train}, "schema": "chat", "maxSeqLength": 128,
    }))  # fmt: skip
    assert code == USER_ERROR_EXIT_CODE and termination["code"] == "DatasetInvalid", termination
    assert f"{train} line " in termination["message"]
    assert "chat template does not render 'name'" in termination["message"]


# --- never train on evaluation data ----------------------------------------------------------------------


def put_parquet(s3_bucket: Any, key: str, records: list[dict[str, Any]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buffer)
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=key, Body=buffer.getvalue())


def hf_repository(s3_bucket: Any) -> list[dict[str, str]]:
    """A Hugging Face dataset repository's layout: two train shards and one test shard under data/."""
    records = alpaca_records(60)
    put_parquet(s3_bucket, "hf/data/train-00000-of-00002.parquet", records[:25])
    put_parquet(s3_bucket, "hf/data/train-00001-of-00002.parquet", records[25:50])
    put_parquet(s3_bucket, "hf/data/test-00000-of-00001.parquet", records[50:])
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="hf/README.md", Body=b"# a dataset card")
    return records


def test_hf_repository_test_shard_is_never_trained_on(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    records = hf_repository(s3_bucket)
    test_uri = s3_bucket.uri("hf/data/test-00000-of-00001.parquet")
    raw = short_run(without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("hf/data/"))))
    raw["dataset"]["test"] = {"uri": test_uri}
    raw["dataset"]["split"] = {"validation": 0.1, "test": 0.0, "seed": 1}
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination

    report = read_json(s3_bucket, "out/run-1/split/dataset.json")
    assert report["excludedFromTrain"] == [test_uri] and report["files"]["test"] == [test_uri]
    assert report["overlapWithTrain"] == {"validation": 0, "test": 0}
    trained = read_lines(s3_bucket, "out/run-1/split/train.jsonl") + read_lines(
        s3_bucket, "out/run-1/split/validation.jsonl"
    )
    tested = read_lines(s3_bucket, "out/run-1/split/test.jsonl")
    assert tested == records[50:] and sorted(map(json.dumps, trained)) == sorted(map(json.dumps, records[:50]))
    assert read_json(s3_bucket, "out/run-1/metrics.json")["dataset"]["excludedFromTrain"] == [test_uri]


def test_shard_name_prefix_is_a_uri(s3_bucket: Any, tiny_llama_uri: str, run_validate: Any) -> None:
    hf_repository(s3_bucket)
    raw = without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("hf/data/train-")))
    raw["dataset"]["test"] = {"uri": s3_bucket.uri("hf/data/test-")}
    code, termination, summary = run_validate(raw)
    assert code == 0, termination
    assert summary is not None and summary["files"]["train"] == [
        s3_bucket.uri("hf/data/train-00000-of-00002.parquet"),
        s3_bucket.uri("hf/data/train-00001-of-00002.parquet"),
    ]
    assert summary["records"] == {"train": 45, "validation": 5, "test": 10} and summary["schema"] == "alpaca"
    # the training pod's disk (its ephemeral-storage): the model's objects as listed, the data as read here
    disk = summary["diskPlan"]
    listed = s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name, Prefix="models/tiny-llama/")["Contents"]
    assert disk["modelBytes"] == sum(o["Size"] for o in listed) > 0
    assert disk["dataBytes"] > 0 and disk["totalBytes"] > disk["modelBytes"] + disk["dataBytes"]


def test_records_shared_by_train_and_test_fail_above_the_limit(
    s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner
) -> None:
    records = arithmetic_records(40, seed=9)
    unique = list({json.dumps(r): r for r in records}.values())
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/all.jsonl", unique)
    test = put_jsonl(s3_bucket.client, s3_bucket.name, "eval/test.jsonl", unique[:5])
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["test"] = {"uri": test}
    result = run_trainer(raw)
    assert_user_error(result, "DatasetInvalid", "dataset.test: 5 of its 5 record(s) are also in the training data")


# --- encodings and lines ---------------------------------------------------------------------------------


def test_excel_csv_with_bom_crlf_and_multiline_cells(s3_bucket: Any, tiny_llama_uri: str, run_validate: Any) -> None:
    rows = [f'"{r["prompt"]}\nplease","{r["completion"]}"' for r in arithmetic_records(20, seed=5)]
    body = ("\ufeffprompt,completion\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-8")
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/excel.csv", Body=body)
    raw = without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("data/excel.csv")))
    code, termination, summary = run_validate(raw)
    assert code == 0, termination
    assert summary is not None and summary["schema"] == "prompt-completion" and sum(summary["records"].values()) == 20

    broken = body.decode("utf-8").split("\r\n")
    broken[3] += ',"extra"'  # records end in CRLF, cells hold LF: record 3 spans lines 6-7
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/excel.csv", Body="\r\n".join(broken).encode("utf-8"))
    code, termination, _ = run_validate(raw)
    assert code == USER_ERROR_EXIT_CODE, termination
    assert f"{s3_bucket.uri('data/excel.csv')} line 6: 3 fields, but the header has 2" in termination["message"]


def test_a_corrected_file_of_the_same_length_is_read_again(s3_bucket: Any, tmp_path: Path) -> None:
    from finetune_trainer.core.s3_uri import S3Uri
    from finetune_trainer.core.storage import Storage

    uri = S3Uri.parse(s3_bucket.uri("model/config.json"))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=uri.key, Body=b'{"layers": 2}')
    storage = Storage()
    local = storage.download(S3Uri.parse(s3_bucket.uri("model/")), tmp_path)[0]
    assert local.read_bytes() == b'{"layers": 2}'
    stamp = local.stat().st_mtime_ns
    assert storage.download(S3Uri.parse(s3_bucket.uri("model/")), tmp_path)[0].stat().st_mtime_ns == stamp
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key=uri.key, Body=b'{"layers": 4}')  # same length
    assert storage.download(S3Uri.parse(s3_bucket.uri("model/")), tmp_path)[0].read_bytes() == b'{"layers": 4}'


# --- refusals that name the fix --------------------------------------------------------------------------


def test_ambiguous_records_name_the_candidate_schemas(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    records = [{"prompt": "p", "completion": "c", "chosen": "a", "rejected": "b"}] * 10
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/mixed.jsonl", records)
    result = run_trainer(without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train)))
    assert_user_error(
        result,
        "DatasetInvalid",
        f"{train} line 1",
        "several dataset schemas (preference, prompt-completion",
        "set dataset.schema",
    )


def test_preference_data_needs_objective_dpo(s3_bucket: Any, run_trainer: Runner) -> None:
    records = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(20)]
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/pref.jsonl", records)
    raw = without_schema(trainer_config(s3_bucket.name, s3_bucket.uri("models/absent/"), train))
    result = run_trainer(raw)  # refused before the (absent) model is looked at
    assert_user_error(result, "DatasetInvalid", "dataset.schema preference", "method.objective dpo (or simpo); set it")

    records[7] = {"prompt": "q7", "chosen": "good"}
    put_jsonl(s3_bucket.client, s3_bucket.name, "data/pref.jsonl", records)
    raw["dataset"]["schema"] = "preference"
    raw["method"]["objective"] = "dpo"
    assert_user_error(run_trainer(raw), "DatasetInvalid", f"{train} line 8: missing field 'rejected'")


# --- validate: the same checks, no weights ----------------------------------------------------------------


def test_validate_summarises_without_loading_weights(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Any, tmp_path: Path
) -> None:
    records = alpaca_records(40)
    records[3]["input"] = " ".join(["apple banana cherry"] * 60)  # longer than maxSeqLength
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/alpaca.jsonl", records)
    raw = without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train))
    raw["dataset"]["maxSeqLength"] = 96
    raw["hyperparameters"].update({"maxSteps": None, "epochs": 2, "batchSize": 4})
    code, termination, summary = run_validate(raw)
    assert code == 0 and termination["code"] == "Succeeded", termination
    assert summary is not None and termination["summary"]["records"] == summary["records"]
    assert summary["schema"] == "alpaca" and summary["schemaDetected"]
    assert summary["records"] == {"train": 32, "validation": 4, "test": 4}
    assert sum(summary["truncated"].values()) == 1 and all(n > 0 for n in summary["tokens"].values())
    assert summary["estimatedSteps"] == 2 * 8  # 32 records / batch 4 = 8 per epoch, 2 epochs
    assert summary["overlapWithTrain"] == {"validation": 0, "test": 0}
    local = Path(os.environ["FTO_WORK_DIR"]) / "validate" / "tokenizer"
    names = {p.name for p in local.iterdir()}
    assert "config.json" in names and "tokenizer.json" in names
    assert not any(name.endswith((".safetensors", ".bin")) for name in names)


def test_validate_user_errors_exit_like_train(s3_bucket: Any, tiny_llama_uri: str, run_validate: Any) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/q.jsonl", [{"question": "q", "answer": "a"}] * 10)
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    code, termination, summary = run_validate(raw)
    assert code == USER_ERROR_EXIT_CODE and summary is None
    assert termination["code"] == "DatasetInvalid" and "line 1: missing field 'prompt'" in termination["message"]


def test_validate_checks_the_memory_plan_against_the_training_pods_placement(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Any
) -> None:
    """The plan is computed from the model's config.json and the longest tokenized record, and checked against
    where the operator says the training pods go: a CPU pod's memory limit here."""
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/alpaca.jsonl", alpaca_records(40))
    raw = without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train))
    code, termination, summary = run_validate(raw, "--gpus", "0", "--memory-limit", "2Gi")
    assert code == 0, termination
    plan = summary["memoryPlan"] if summary else {}
    assert plan["fits"] and plan["accelerator"] == "cpu" and plan["budgetBytes"] == 2 << 30
    assert 0 < plan["estimateBytes"] < plan["budgetBytes"] and plan["parameters"] > 0
    code, termination, summary = run_validate(raw, "--gpus", "0", "--memory-limit", "1Mi")
    assert code == USER_ERROR_EXIT_CODE and summary is None
    assert termination["code"] == "PlanDoesNotFit" and "does not fit" in termination["message"], termination


def test_validate_refuses_an_s3_model_and_data_larger_than_the_requested_disk(
    s3_bucket: Any, tiny_llama_uri: str, run_validate: Any
) -> None:
    """`--disk-limit` (the job's resources.ephemeralStorage): the model as listed in S3 and the data as read
    must fit in it, a user error otherwise (the same check refuses hf:// sources before their download)."""
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/alpaca.jsonl", alpaca_records(40))
    raw = without_schema(trainer_config(s3_bucket.name, tiny_llama_uri, train))
    code, termination, summary = run_validate(raw, "--disk-limit", "1Ki")
    assert code == USER_ERROR_EXIT_CODE and summary is None
    assert termination["code"] == "DiskRequestTooSmall", termination
    assert "resources.ephemeralStorage is 1Ki" in termination["message"] and "baseModel.uri" in termination["message"]
    code, termination, summary = run_validate(raw, "--disk-limit", "2Gi")
    assert code == 0, termination
