"""`batchSize: auto` and an unset `gradientCheckpointing` in a real trainer run against the real S3 server.

The CPU budget is the pod's memory (FTO_MEMORY_LIMIT, what the container's cgroup says in a pod), set here
from the plan itself so that the run must choose: every record is cut at maxSeqLength (the plan's longest
record is then exactly maxSeqLength), the budget admits a micro-batch of 4 with 4 accumulated and not 8 with
2, and the run records and trains with what it chose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.config import parse_config
from finetune_trainer.memory.estimate import estimate
from finetune_trainer.memory.gpus import cpu
from finetune_trainer.memory.plan import setup_of
from finetune_trainer.memory.shapes import model_shape

from tests.trainer.builders import put_jsonl, trainer_config
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3]

SEQ = 48


def long_records(count: int) -> list[dict[str, str]]:
    """Records longer than SEQ tokens, the length in the completion (cut, not dropped, at maxSeqLength)."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return [{"prompt": f"count from {words[i % 10]}", "completion": " " + " ".join(words * 8)} for i in range(count)]


def _peak(config: dict[str, Any], raw: dict[str, Any], batch: int, accumulation: int, checkpointing: bool) -> int:
    cfg = parse_config(raw)
    setup = replace(
        setup_of(cfg),
        micro_batch=batch,
        gradient_accumulation=accumulation,
        gradient_checkpointing=checkpointing,
        seq_length=SEQ,
    )
    return estimate(model_shape(config), setup, cpu(64 << 30)).total


def _recorded(s3_bucket: Any, run: int) -> dict[str, Any]:
    key = f"out/run-{run}/trainer_config.json"
    document: dict[str, Any] = json.loads(s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=key)["Body"].read())
    return document


def test_auto_batch_and_checkpointing_are_chosen_to_fit_and_trained_with(
    s3_bucket: Any,
    tiny_llama_uri: str,
    tiny_llama_folder: Path,
    run_trainer: Callable[[dict[str, Any]], TrainerResult],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = json.loads((tiny_llama_folder / "config.json").read_text())
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/train.jsonl", long_records(80))
    raw = trainer_config(s3_bucket.name, tiny_llama_uri, train)
    raw["dataset"]["maxSeqLength"] = SEQ
    raw["hyperparameters"].update({"batchSize": "auto", "effectiveBatchSize": 16, "maxSteps": 3})
    raw["checkpointing"] = {"intervalSteps": 3, "keep": 1}

    # A budget between a micro-batch of 4 (4 accumulated) and one of 8 (2 accumulated), no checkpointing.
    four, eight = _peak(config, raw, 4, 4, False), _peak(config, raw, 8, 2, False)
    assert four < eight
    monkeypatch.setenv("FTO_MEMORY_LIMIT", str((four + eight) // 2))
    caplog.set_level("INFO", logger="finetune_trainer")
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    hp = _recorded(s3_bucket, 1)["hyperparameters"]
    assert (hp["batchSize"], hp["gradientAccumulationSteps"], hp["effectiveBatchSize"]) == (4, 4, 16)
    assert hp["gradientCheckpointing"] is False
    assert "batchSize auto -> 4 x 4 accumulated" in caplog.text
    state = s3_bucket.client.get_object(
        Bucket=s3_bucket.name, Key="out/run-1/checkpoints/checkpoint-3/trainer_state.json"
    )
    assert json.loads(state["Body"].read())["train_batch_size"] == 4  # the Trainer ran what was recorded

    # A budget that one sequence fits only with checkpointing: the unset field turns it on.
    with_checkpointing, without = _peak(config, raw, 1, 16, True), _peak(config, raw, 1, 16, False)
    assert with_checkpointing < without
    monkeypatch.setenv("FTO_MEMORY_LIMIT", str((with_checkpointing + without) // 2))
    raw["job"] = {**raw["job"], "run": 2}
    raw["output"] = {**raw["output"], "runUri": raw["output"]["uri"] + "run-2/"}
    result = run_trainer(raw)
    assert result.exit_code == 0, result.termination
    hp = _recorded(s3_bucket, 2)["hyperparameters"]
    assert hp["gradientCheckpointing"] is True and hp["batchSize"] * hp["gradientAccumulationSteps"] == 16
    assert "gradient checkpointing on (needed to fit)" in caplog.text
