"""End-to-end training runs against the real S3 server: artifacts, checkpoints, methods, schemas, formats."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.trainer.builders import arithmetic_records, put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3, pytest.mark.slow]

Runner = Callable[[dict[str, Any]], TrainerResult]


def read(s3_bucket: Any, key: str) -> bytes:
    return bytes(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())


def keys(s3_bucket: Any, prefix: str) -> list[str]:
    pages = s3_bucket.client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket.name, Prefix=prefix)
    return sorted(item["Key"] for page in pages for item in page.get("Contents", []))


def chat_records(count: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "system", "content": "answer with one word"},
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"].strip()},
            ]
        }
        for r in arithmetic_records(count, seed=1)
    ]


def test_chat_lora_run_writes_every_artifact(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/chat.jsonl", chat_records(120))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"].update({"schema": "chat", "maxSeqLength": 96})
    raw["hyperparameters"]["maxSteps"] = 20
    raw["evaluation"] = {"compareBaseModel": True}
    result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    assert result.termination["code"] == "Succeeded" and result.termination["message"] == "trained 20 steps"
    metrics = result.termination["metrics"]
    assert set(metrics) == {"validation", "test"} and set(metrics["test"]) == {"loss", "perplexity"}

    document = json.loads(read(s3_bucket, "out/run-1/metrics.json"))
    assert document["metrics"] == metrics and document["steps"] == 20
    assert document["gateMetrics"]["test_loss"] == metrics["test"]["loss"]
    base_loss = document["baseModel"]["test"]["loss"]
    assert metrics["test"]["loss"] < base_loss - 0.5, (metrics, document["baseModel"])

    model_keys = keys(s3_bucket, "out/run-1/model/")
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "finetune_config.json",
    ):
        assert f"out/run-1/model/{name}" in model_keys
    meta = json.loads(read(s3_bucket, "out/run-1/model/finetune_config.json"))
    assert meta["adapter"] and meta["defaultChatTemplate"] and meta["task"] == "causal-lm"
    tokenizer_config = json.loads(read(s3_bucket, "out/run-1/model/tokenizer_config.json"))
    template = tokenizer_config.get("chat_template") or read(s3_bucket, "out/run-1/model/chat_template.jinja").decode()
    assert "<|assistant|>" in template

    report = read(s3_bucket, "out/run-1/report.html").decode()
    assert "data:image/png;base64," in report and f"{metrics['test']['loss']:.4f}" in report
    assert read(s3_bucket, "out/run-1/loss_curve.png").startswith(b"\x89PNG")

    parts = {
        name: read(s3_bucket, f"out/run-1/split/{name}.jsonl").splitlines() for name in ("train", "validation", "test")
    }
    # 120 records with many copies (36 distinct sums): copies stay in one split, so held-out parts take at
    # least their 10% each and share no record with train
    assert sum(map(len, parts.values())) == 120 and len(parts["test"]) >= 12 and len(parts["validation"]) >= 12
    assert not set(parts["train"]) & (set(parts["test"]) | set(parts["validation"]))
    assert json.loads(read(s3_bucket, "out/run-1/trainer_config.json"))["dataset"]["schema"] == "chat"

    checkpoint_keys = keys(s3_bucket, "out/run-1/checkpoints/")
    complete = {k.split("/")[3] for k in checkpoint_keys if k.endswith("/_COMPLETE")}
    # keep: 2, the final one among them (a checkpoint waiting behind a slow upload may be skipped, see
    # test_checkpoint_uploads_s3.py)
    assert len(complete) == 2 and "checkpoint-20" in complete
    assert {k.split("/")[3] for k in checkpoint_keys} == complete
    assert "out/run-1/checkpoints/checkpoint-20/trainer_config.json" in checkpoint_keys


def test_prompt_completion_csv_lora_merged(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["prompt", "completion"])
    writer.writeheader()
    writer.writerows(arithmetic_records(60))
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/train.csv", Body=buffer.getvalue().encode())
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("data/train.csv"))
    raw["method"] = {"type": "lora", "lora": {"rank": 4, "alpha": 8}, "mergeWeights": True}
    raw["hyperparameters"].update({"maxSteps": 4, "precision": "bf16"})  # frozen base in bf16, adapter fp32
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    model_keys = keys(s3_bucket, "out/run-1/model/")
    assert "out/run-1/model/model.safetensors" in model_keys
    assert "out/run-1/model/adapter_config.json" not in model_keys
    assert json.loads(read(s3_bucket, "out/run-1/model/finetune_config.json"))["merged"] is True
    assert json.loads(read(s3_bucket, "out/run-1/metrics.json"))["precision"] == "bf16"
    weights = read(s3_bucket, "out/run-1/model/model.safetensors")
    header = json.loads(weights[8 : 8 + int.from_bytes(weights[:8], "little")])
    dtypes = {entry["dtype"] for name, entry in header.items() if name != "__metadata__"}
    assert dtypes == {"BF16"}, dtypes  # merged into the bf16 base; no LoRA tensors left
    assert not any("lora" in name for name in header)


def test_text_parquet_prefix_full_finetune(s3_bucket: Any, tiny_llama_uri: str, run_trainer: Runner) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"{r['prompt']}{r['completion']}" for r in arithmetic_records(40, seed=2)]
    for part in range(2):
        buffer = io.BytesIO()
        pq.write_table(pa.table({"body": texts[part::2]}), buffer)
        s3_bucket.client.put_object(
            Bucket=s3_bucket.name, Key=f"data/texts/part-{part}.parquet", Body=buffer.getvalue()
        )
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="data/texts/_SUCCESS", Body=b"")
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, s3_bucket.uri("data/texts/"))
    raw["dataset"].update({"schema": "text", "columns": {"text": "body"}})
    raw["method"] = {"type": "full"}
    raw["hyperparameters"].update(
        {"maxSteps": None, "epochs": 1, "warmupRatio": 0.25, "learningRate": 0.001, "lrScheduler": "cosine"}
    )
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    assert result.termination["message"] == "trained 4 steps"  # one epoch: about 32 examples / batch 8
    model_keys = keys(s3_bucket, "out/run-1/model/")
    assert "out/run-1/model/model.safetensors" in model_keys and "out/run-1/model/config.json" in model_keys
    trained = read(s3_bucket, "out/run-1/split/train.jsonl").splitlines()
    held_out = read(s3_bucket, "out/run-1/split/test.jsonl").splitlines()
    assert 25 <= len(trained) <= 32 and not set(trained) & set(held_out)  # copies of a record stay in one split
