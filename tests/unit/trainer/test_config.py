"""The trainer config model: the contract's example validates; every error is reported at once, with paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from finetune_trainer.config import load_config, parse_config
from finetune_trainer.core.errors import USER_ERROR_EXIT_CODE, ConfigInvalid

CONTRACT_EXAMPLE: dict[str, Any] = {
    "apiVersion": "finetune.dev/v1alpha1",
    "kind": "TrainerConfig",
    "job": {"namespace": "team-a", "name": "support-bot", "uid": "abc", "run": 2},
    "baseModel": {"uri": "s3://models/llama/", "task": "causal-lm", "numLabels": None, "labels": None},
    "dataset": {
        "train": {"uri": "s3://data/train.jsonl"},
        "validation": None,
        "test": None,
        "split": {"validation": 0.1, "test": 0.1, "seed": 42},
        "schema": "chat",
        "columns": {},
        "maxSeqLength": 2048,
        "format": None,
    },
    "method": {
        "type": "lora",
        "lora": {"rank": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["all-linear"]},
        "mergeWeights": False,
    },
    "hyperparameters": {
        "epochs": 3,
        "learningRate": 0.0002,
        "batchSize": 8,
        "gradientAccumulationSteps": 1,
        "warmupRatio": 0.03,
        "lrScheduler": "cosine",
        "seed": 42,
        "precision": "auto",
        "maxSteps": None,
        "weightDecay": 0.0,
    },
    "checkpointing": {"intervalSteps": 200, "keep": 2},
    "evaluation": {"compareBaseModel": False},
    "distributed": {"workers": 1, "processesPerWorker": 1},
    "output": {
        "uri": "s3://artifacts/team-a/support-bot/",
        "runUri": "s3://artifacts/team-a/support-bot/run-2/",
    },
}


def test_contract_example_validates_and_round_trips() -> None:
    config = parse_config(CONTRACT_EXAMPLE)
    assert config.dataset.schema_ == "chat"
    assert config.hyperparameters.learning_rate == 0.0002
    again = parse_config(json.loads(config.to_json()))
    assert again == config


def test_defaults_fill_optional_sections() -> None:
    minimal = {k: CONTRACT_EXAMPLE[k] for k in ("job", "baseModel", "dataset", "output")}
    config = parse_config(minimal)
    assert config.method.type == "lora" and config.method.lora.target_modules == ["all-linear"]
    assert config.checkpointing.keep == 2


def test_every_error_is_reported_at_once_with_field_paths() -> None:
    bad = json.loads(json.dumps(CONTRACT_EXAMPLE))
    bad["hyperparameters"]["learningRate"] = -1
    bad["hyperparameters"]["batchsize"] = 4  # typo: unknown field
    bad["baseModel"]["uri"] = "http://models/llama/"
    bad["method"]["type"] = "qlora2"
    with pytest.raises(ConfigInvalid) as caught:
        parse_config(bad)
    message = str(caught.value)
    assert "4 error(s)" in message
    for path in ("hyperparameters.learningRate", "hyperparameters.batchsize", "baseModel.uri", "method.type"):
        assert path in message
    assert caught.value.exit_code == USER_ERROR_EXIT_CODE and caught.value.code == "ConfigInvalid"


@pytest.mark.parametrize(
    ("section", "patch", "fragment"),
    [
        ("dataset", {"split": {"validation": 0.5, "test": 0.5, "seed": 1}}, "sum to 1"),
        ("dataset", {"columns": {"txt": "body"}}, "columns.txt"),
        ("dataset", {"split": {"validation": 0.1, "test": 0.0, "seed": 1}}, "split.test"),
        ("output", {"runUri": "s3://elsewhere/run-2/"}, "must lie under"),
        ("baseModel", {"task": "sequence-classification"}, "does not fit baseModel.task"),
        ("baseModel", {"labels": ["a", "b"]}, "only apply to task sequence-classification"),
        ("method", {"type": "full", "mergeWeights": True}, "mergeWeights applies to lora"),
    ],
)
def test_cross_field_rules(section: str, patch: dict[str, Any], fragment: str) -> None:
    bad = json.loads(json.dumps(CONTRACT_EXAMPLE))
    bad[section].update(patch)
    with pytest.raises(ConfigInvalid, match=fragment):
        parse_config(bad)


def test_classification_labels_must_match_num_labels() -> None:
    bad = json.loads(json.dumps(CONTRACT_EXAMPLE))
    bad["baseModel"].update({"task": "sequence-classification", "numLabels": 3, "labels": ["a", "b"]})
    bad["dataset"]["schema"] = "classification"
    with pytest.raises(ConfigInvalid, match="numLabels is 3 but 2 labels"):
        parse_config(bad)


def test_load_config_reports_json_syntax_position(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{\n  "job": {,}\n}')
    with pytest.raises(ConfigInvalid, match="line 2 column"):
        load_config(path)


@pytest.mark.parametrize(
    ("hyperparameters", "distributed", "method", "fragment"),
    [
        ({"batchSize": "auto", "gradientAccumulationSteps": 4}, {}, "lora", "set effectiveBatchSize"),
        ({"batchSize": "auto", "effectiveBatchSize": 9}, {"processesPerWorker": 2}, "lora", "not a multiple"),
        ({"batchSize": 4, "gradientAccumulationSteps": 2, "effectiveBatchSize": 16}, {}, "lora", "= 8"),
        ({"batchSize": "big"}, {}, "lora", "hyperparameters.batchSize"),
        ({}, {"sharding": "fsdp"}, "lora", "distributed.sharding: fsdp shards full fine-tuning"),
        ({}, {"sharding": "zero3"}, "full", "distributed.sharding"),
    ],
)
def test_batch_and_sharding_rules(
    hyperparameters: dict[str, Any], distributed: dict[str, Any], method: str, fragment: str
) -> None:
    bad = json.loads(json.dumps(CONTRACT_EXAMPLE))
    bad["hyperparameters"].update(hyperparameters)
    bad["distributed"].update(distributed)
    bad["method"]["type"] = method
    with pytest.raises(ConfigInvalid, match=fragment):
        parse_config(bad)


def test_batch_size_auto_resolves_to_what_was_trained() -> None:
    raw = json.loads(json.dumps(CONTRACT_EXAMPLE))
    raw["hyperparameters"].update({"batchSize": "auto", "effectiveBatchSize": 32})
    raw["distributed"] = {"workers": 2, "processesPerWorker": 2, "sharding": "none"}
    config = parse_config(raw)
    assert config.sequences_per_process() == 8 and config.world_size == 4
    resolved = config.with_batch(2, 4, True)
    hp = resolved.hyperparameters
    assert (hp.batch_size, hp.gradient_accumulation_steps, hp.gradient_checkpointing) == (2, 4, True)
    assert hp.effective_batch_size == 32 and parse_config(json.loads(resolved.to_json())) == resolved
    default = parse_config({**raw, "hyperparameters": {"batchSize": "auto"}})
    assert default.sequences_per_process() == 8  # 8 per process when effectiveBatchSize is left out
    full = parse_config({**raw, "method": {"type": "full"}, "distributed": {"sharding": "fsdp"}})
    assert full.distributed.sharding == "fsdp"
