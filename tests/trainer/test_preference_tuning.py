"""DPO and SimPO on the real SmolLM2-135M-Instruct: the tuned model learns a preference the base model does not have.

The data is generated: for a prompt about a topic, the chosen answer is written in ALL CAPITALS and the rejected
one is the same sentence as written normally, so the pairs differ only in the rule. The base model has no
preference for capitals (its preference accuracy on the held-out pairs is at most 0.6); the validation and test
pairs are about topics that no training prompt mentions. One trainer run per objective in this process (LoRA,
short sequences, a few steps) must reach a test reward accuracy of at least 0.8, report every preference metric
in metrics.json, its gate names and the report, keep the best checkpoint by the validation loss, and publish an
adapter whose greedy answers to held-out prompts follow the rule (capitals) more often than the base model's.
About 65 tokens per pair, 12 steps of 4 pairs: 22 minutes for the DPO run here on 2 cores shared at a load of
20; a few minutes on 2 free cores. The SimPO run is cheaper per step (no reference pass).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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


def greedy_answers(model_folder: Path, adapter: Path | None, topics: Sequence[str]) -> list[str]:
    """The model's (with `adapter`, the published LoRA adapter's) greedy answers to held-out prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    answers = []
    for topic in topics:
        messages = pair(0, topic)["prompt"]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def upper_share(answer: str) -> float:
    """The share of the answer's letters that are upper case (0 when it has none)."""
    letters = [c for c in answer if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def follows_rule(answer: str) -> bool:
    """The answer is written in capitals: at least 90% of its letters are upper case."""
    return upper_share(answer) >= 0.9


def download_folder(client: Any, bucket: str, prefix: str, folder: Path) -> Path:
    for item in client.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]:
        target = folder / item["Key"][len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, item["Key"], str(target))
    return folder


def preference_run(s3_bucket: Any, smollm2_folder: Path, method: dict[str, Any]) -> dict[str, Any]:
    """The trainer config of a LoRA preference run on the generated pairs (held-out topics for validation/test)."""
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
        **method,
        "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]},
    }
    raw["hyperparameters"].update({"learningRate": 1e-3, "batchSize": 4, "maxSteps": 12, "epochs": 2})
    raw["checkpointing"] = {"intervalSteps": 6, "keep": 1}
    raw["evaluation"] = {"compareBaseModel": True, "intervalSteps": 6}
    return raw


def assert_greedy_answers_follow_the_rule(s3_bucket: Any, smollm2_folder: Path, tmp_path: Path) -> None:
    """The published adapter's greedy answers to held-out test prompts (topics no training prompt names, and
    free text rather than the training answers' one sentence) are written in capitals more often than the base
    model's, and their letters are markedly more often upper case. As measured here after 12 steps of SimPO:
    2 of the 6 answers entirely in capitals (the base model: none), 0.36 of all letters upper case on average
    (the base model: 0.02); a longer run moves further, this bound keeps the test's run short."""
    adapter = download_folder(s3_bucket.client, s3_bucket.name, "out/run-1/model/", tmp_path / "adapter")
    topics = HELD_OUT_TOPICS[4:10]
    base = greedy_answers(smollm2_folder, None, topics)
    tuned = greedy_answers(smollm2_folder, adapter, topics)
    base_rate = sum(map(follows_rule, base)) / len(topics)
    tuned_rate = sum(map(follows_rule, tuned)) / len(topics)
    base_share = sum(map(upper_share, base)) / len(topics)
    tuned_share = sum(map(upper_share, tuned)) / len(topics)
    assert tuned_rate > base_rate and tuned_share >= base_share + 0.2, (tuned, base)


def test_dpo_lora_learns_a_preference_the_base_model_lacks(
    s3_bucket: Any, smollm2_folder: Path, run_trainer: Runner, tmp_path: Path
) -> None:
    client, bucket = s3_bucket.client, s3_bucket.name
    raw = preference_run(s3_bucket, smollm2_folder, {"objective": "dpo", "dpo": {"beta": 0.1, "lossType": "sigmoid"}})
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
    assert_greedy_answers_follow_the_rule(s3_bucket, smollm2_folder, tmp_path)


def test_simpo_lora_learns_the_preference_without_a_reference(
    s3_bucket: Any, smollm2_folder: Path, run_trainer: Runner, tmp_path: Path
) -> None:
    client, bucket = s3_bucket.client, s3_bucket.name
    raw = preference_run(s3_bucket, smollm2_folder, {"objective": "simpo", "simpo": {"beta": 2.0, "gamma": 0.5}})
    result = run_trainer(raw)

    assert result.exit_code == 0, result.termination
    metrics = result.termination["metrics"]
    document = json.loads(client.get_object(Bucket=bucket, Key="out/run-1/metrics.json")["Body"].read())
    base = document["baseModel"]["test"]["preference_accuracy"]
    assert base <= 0.6, document["baseModel"]
    # SimPO's reward is the policy's own per-token mean log-likelihood: its accuracy IS the tuned preference
    assert metrics["test"]["reward_accuracy"] >= 0.8, (metrics, document["baseModel"])
    assert metrics["test"]["preference_accuracy"] >= 0.8 and metrics["test"]["reward_margin"] > 0, metrics
    assert document["gateMetrics"]["test_reward_accuracy"] == metrics["test"]["reward_accuracy"]
    report = client.get_object(Bucket=bucket, Key="out/run-1/report.html")["Body"].read().decode()
    assert "lora, objective simpo" in report
    assert any("reward_accuracy" in entry for entry in document["history"]), "the training log has the rewards"
    assert_greedy_answers_follow_the_rule(s3_bucket, smollm2_folder, tmp_path)
