"""DPO on the real SmolLM2-135M-Instruct: the tuned model learns a preference the base model does not have.

The data is generated: for a prompt about a topic, the chosen answer is written in ALL CAPITALS and the rejected
one is the same sentence as written normally, so the pairs differ only in the rule. The base model has no
preference for capitals (its preference accuracy on the held-out pairs is at most 0.6); the validation and test
pairs are about topics that no training prompt mentions. One trainer run in this process (LoRA, short
sequences, a few steps) must reach a test reward accuracy of at least 0.8, report every DPO metric in
metrics.json, its gate names and the report, keep the best checkpoint by the validation DPO loss, and publish an
adapter. About 65 tokens per pair, 12 steps of 4 pairs: 22 minutes here on 2 cores shared at a load of 20; a
few minutes on 2 free cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.builders import put_jsonl, trainer_config, upload_folder
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

Runner = Callable[[dict[str, Any]], TrainerResult]

TRAIN_TOPICS = [
    "apples", "rivers", "mountains", "bread", "winter", "music", "cats", "trains", "oceans", "books", "coffee",
    "gardens", "stars", "bicycles", "rain", "forests", "cheese", "clocks", "bridges", "wolves", "tea", "snow",
    "kites", "islands",
]  # fmt: skip
HELD_OUT_TOPICS = ["lamps", "horses", "deserts", "violins", "tomatoes", "castles", "owls", "pencils", "volcanoes",
                   "boats", "candles", "bees", "rockets", "mirrors"]  # fmt: skip
TEMPLATES = ["{t} are nice.", "I like {t}.", "{t} can be useful."]
SYSTEM = "Answer in one short sentence."


def pair(index: int, topic: str) -> dict[str, Any]:
    """A TRL conversational pair: the chosen answer follows the rule (capitals), the rejected one breaks it."""
    answer = TEMPLATES[index % len(TEMPLATES)].format(t=topic).capitalize()
    return {
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about {topic}."}],
        "chosen": [{"role": "assistant", "content": answer.upper()}],
        "rejected": [{"role": "assistant", "content": answer}],
    }


@pytest.fixture(scope="module")
def smollm2_folder() -> Path:
    from finetune_trainer.devtools import smollm2

    return smollm2.model_folder()  # converted on first use, then cached under $FTO_CACHE/models


def test_dpo_lora_learns_a_preference_the_base_model_lacks(
    s3_bucket: Any, smollm2_folder: Path, run_trainer: Runner
) -> None:
    client, bucket = s3_bucket.client, s3_bucket.name
    model_uri = upload_folder(client, bucket, smollm2_folder, "models/smollm2")
    train = put_jsonl(client, bucket, "data/train.jsonl", [pair(i, t) for i, t in enumerate(TRAIN_TOPICS)])
    validation = put_jsonl(
        client, bucket, "held/validation.jsonl", [pair(i, t) for i, t in enumerate(HELD_OUT_TOPICS[:4])]
    )
    test = put_jsonl(client, bucket, "held/test.jsonl", [pair(i, t) for i, t in enumerate(HELD_OUT_TOPICS[4:])])
    raw = trainer_config(bucket, model_uri, train)
    raw["dataset"] = {
        "train": {"uri": train},
        "validation": {"uri": validation},
        "test": {"uri": test},
        "maxSeqLength": 64,
    }
    raw["method"] = {
        "type": "lora",
        "objective": "dpo",
        "dpo": {"beta": 0.1, "lossType": "sigmoid"},
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
    }
    raw["hyperparameters"].update({"learningRate": 5e-4, "batchSize": 4, "maxSteps": 12, "epochs": 2})
    raw["checkpointing"] = {"intervalSteps": 6, "keep": 1}
    raw["evaluation"] = {"compareBaseModel": True, "intervalSteps": 6}
    result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    metrics = result.termination["metrics"]
    assert set(metrics["test"]) == {
        "loss", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward", "preference_accuracy",
    }  # fmt: skip
    document = json.loads(client.get_object(Bucket=bucket, Key="out/run-1/metrics.json")["Body"].read())
    base = document["baseModel"]["test"]["preference_accuracy"]
    assert base <= 0.6, document["baseModel"]  # the base model does not already prefer capitals
    assert metrics["test"]["reward_accuracy"] >= 0.8, (metrics, document["baseModel"])
    assert metrics["test"]["reward_margin"] > 0 and metrics["test"]["loss"] < 0.6931, metrics
    assert metrics["test"]["preference_accuracy"] > base, (metrics, document["baseModel"])
    assert document["gateMetrics"]["test_reward_accuracy"] == metrics["test"]["reward_accuracy"]
    assert document["dataset"]["schema"] == "preference" and document["dataset"]["records"]["test"] == 10
    assert document["dataset"]["tokens"]["train"]["dropped"] == 0

    selection = json.loads(client.get_object(Bucket=bucket, Key="out/run-1/selection.json")["Body"].read())
    assert [entry["step"] for entry in selection["history"]] == [6, 12], selection  # validation DPO loss
    report = client.get_object(Bucket=bucket, Key="out/run-1/report.html")["Body"].read().decode()
    assert "reward_accuracy" in report
    listed = client.list_objects_v2(Bucket=bucket, Prefix="out/run-1/model/")["Contents"]
    assert "out/run-1/model/adapter_model.safetensors" in {item["Key"] for item in listed}
    assert any("reward_accuracy" in entry for entry in document["history"]), "the training log has the rewards"
    assert "lora, objective dpo" in report
