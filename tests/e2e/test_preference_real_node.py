"""SFT, then DPO on top of it, on the local cluster's real node, through the chart: the recipe of
docs/preference-tuning.md end to end.

1. An SFT FineTuneJob trains a LoRA adapter on a tiny random Llama: questions answered with one word, a fruit or a
   colour as often (the answer's format, not a preference). It is not served; its status names the published
   model folder (`status.artifacts.model`, the run's `run-N/model/`).
2. A DPO FineTuneJob starts from that model as a user writes it: `baseModel.uri` the same base, `baseModel.adapter`
   the folder read from the SFT job's status, `mergeWeights: true`. Its pairs follow a rule the SFT model does not
   know: the chosen answer is a fruit, the rejected one a colour (validation and test pairs are new questions).
   `compareBaseModel` measures the starting model (the SFT adapter merged into the base) on the same pairs; the
   gate is `test_reward_accuracy >= GATE`.
3. Asserted: the gate passed on a test reward accuracy at or above `GATE`, while the starting model's preference
   accuracy on the test pairs is near chance (at most `GATE - 0.2`): the gate measures what DPO taught; the DPO
   metrics are in the status and metrics.json; the run merged the SFT job's adapter (its trainer_config.json and
   finetune_config.json say so); the merged model is served and answers held-out questions through the official
   `openai` client, whose `top_logprobs` of the first answer token rank a fruit above every colour.

Cheap by design (CI time): a Llama 2 layers x 64 wide with a 512-token vocabulary (every word of the data one
token), 64 chat records and 200 pairs of about 40 tokens, 30 SFT and 20 DPO steps of 8 on one core. The model
is too small to write a clean greedy answer after so few steps (its likeliest first token is often a stray byte),
so the served check is on the ranking of the answer words, the quantity DPO trains.
"""

from __future__ import annotations

import base64
import json
import os
import random
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cluster
from tests.e2e.conftest import GROUP, PLURAL, VERSION, install_chart, s3_client, s3_keys, wait_phase
from tests.support.portforward import port_forward

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

FRUIT = ("apple", "banana", "cherry", "grape", "lemon", "mango", "orange", "peach", "pear", "plum")
"""The chosen answers (`orange` is a fruit here)."""
COLOURS = ("red", "green", "blue", "yellow", "purple", "brown", "black", "white", "pink", "grey")
FILLER = ("the", "a", "is", "are", "was", "of", "and", "what", "which", "how", "one", "two", "three", "four", "big")
GATE = 0.9
"""The gate's minimum test reward accuracy: the DPO run reaches 1.0 in the runs measured here (0.9 after 12 of
its 20 steps), and the starting model's preference accuracy on the test pairs is 0.4-0.5."""


def prompt(rng: random.Random) -> str:
    """A question of 5 to 9 random words, ending with a question mark."""
    return " ".join(rng.choice(FILLER) for _ in range(rng.randint(5, 9))) + " ?"


def preference_pairs(count: int, seed: int) -> list[dict[str, str]]:
    """`count` string preference pairs: a question, a fruit chosen, a colour rejected (each drawn at random)."""
    rng = random.Random(seed)
    return [{"prompt": prompt(rng), "chosen": rng.choice(FRUIT), "rejected": rng.choice(COLOURS)} for _ in range(count)]


def sft_records(count: int, seed: int) -> list[dict[str, Any]]:
    """Chat records answered with one word, a fruit or a colour as often (the answer's format, not the rule)."""
    rng = random.Random(seed)
    return [
        {
            "messages": [
                {"role": "user", "content": prompt(rng)},
                {"role": "assistant", "content": rng.choice(FRUIT if index % 2 else COLOURS)},
            ]
        }
        for index in range(count)
    ]


def build_model(folder: Path) -> Path:
    """The tiny random Llama (devtools.tiny) with a tokenizer that holds every word of the data as one token. Its
    weights are drawn 10x wider than the default (initializer_range 0.2): at 0.02 the output is near uniform and a
    LoRA adapter moves it too little in a few dozen steps (the SFT loss stays at ln |vocab|)."""
    from finetune_trainer.devtools.tiny import WORDS, build_causal_lm, train_tokenizer, word_corpus

    corpus = word_corpus(words=(*WORDS, *COLOURS))
    return build_causal_lm(folder, train_tokenizer(corpus, vocab_size=512), initializer_range=0.2)


LORA = {"rank": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["all-linear"]}
HYPERPARAMETERS = {"batchSize": 8, "learningRate": 0.01, "lrScheduler": "constant", "warmupRatio": 0.0}


def _manifest(name: str, bucket: str, **spec: Any) -> dict[str, Any]:
    common: dict[str, Any] = {
        "baseModel": {"uri": f"s3://{bucket}/model/"},
        "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},
        "output": {"uri": f"s3://{bucket}/{name}/"},
        "storage": {"credentialsSecret": "s3-creds", "endpoint": os.environ["FTO_POD_S3_ENDPOINT"]},
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": common | spec,
    }


def sft_job(bucket: str) -> dict[str, Any]:
    return _manifest(
        "sft",
        bucket,
        dataset={
            "train": {"uri": f"s3://{bucket}/data/sft.jsonl"},
            "schema": "chat",
            "maxSeqLength": 64,
            "split": {"validation": 0.125, "test": 0.125, "seed": 1},
        },
        method={"type": "lora", "lora": LORA},
        hyperparameters=HYPERPARAMETERS | {"maxSteps": 30},
        serving={"enabled": False},
    )


def dpo_job(bucket: str, sft_model: str) -> dict[str, Any]:
    manifest = _manifest(
        "dpo",
        bucket,
        dataset={
            "train": {"uri": f"s3://{bucket}/data/pairs.jsonl"},
            "schema": "preference",
            "maxSeqLength": 64,
            "split": {"validation": 0.1, "test": 0.15, "seed": 1},
        },
        method={
            "type": "lora",
            "objective": "dpo",
            "dpo": {"beta": 0.1},
            "mergeWeights": True,  # the run starts from merged weights, so it publishes merged weights
            "lora": LORA,
        },
        hyperparameters=HYPERPARAMETERS | {"maxSteps": 20},
        evaluation={"compareBaseModel": True, "gate": [{"metric": "test_reward_accuracy", "min": GATE}]},
        serving={"enabled": True},
    )
    manifest["spec"]["baseModel"]["adapter"] = sft_model
    return manifest


@pytest.fixture
def bucket(tmp_path: Path) -> Iterator[str]:
    """A bucket of the test's own with the tiny model (model/), the SFT records and the preference pairs (data/)."""
    s3 = s3_client()
    name = "e2e-" + uuid.uuid4().hex[:12]
    s3.create_bucket(Bucket=name)
    for path in build_model(tmp_path / "model").iterdir():
        s3.upload_file(str(path), name, f"model/{path.name}")
    for key, records in (("sft", sft_records(64, 1)), ("pairs", preference_pairs(200, 2))):
        body = "".join(json.dumps(record) + "\n" for record in records).encode()
        s3.put_object(Bucket=name, Key=f"data/{key}.jsonl", Body=body)
    yield name
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=name, Key=item["Key"])
    s3.delete_bucket(Bucket=name)


def test_sft_then_dpo_from_its_model_is_gated_on_reward_accuracy_and_served(
    cluster: Cluster, namespace: str, images: dict[str, str], bucket: str
) -> None:
    s3 = s3_client()
    cluster.core.create_namespaced_secret(namespace, {"metadata": {"name": "s3-creds"}, "stringData": s3_keys()})
    with install_chart(cluster, namespace, images):
        custom = cluster.custom
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, sft_job(bucket))
        sft = wait_phase(cluster, namespace, "sft", ("Succeeded", "Failed"), 900)
        assert sft["phase"] == "Succeeded", sft
        sft_model = sft["artifacts"]["model"]  # read as a user would: the run's published model folder
        assert sft_model == f"s3://{bucket}/sft/run-1/model/", sft["artifacts"]

        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, dpo_job(bucket, sft_model))
        status = wait_phase(cluster, namespace, "dpo", ("Serving", "Failed"), 900)
        assert status["phase"] == "Serving", status

        # the gate: passed on test reward accuracy, which the starting (merged SFT) model does not have
        test = status["metrics"]["test"]
        assert status["gate"]["passed"] is True and test["reward_accuracy"] >= GATE, (status["gate"], test)
        assert test["reward_margin"] > 0 and test["chosen_reward"] > test["rejected_reward"], test
        assert test["loss"] < 0.6931, test  # below log 2: the chance-level DPO loss
        document = json.loads(s3.get_object(Bucket=bucket, Key="dpo/run-1/metrics.json")["Body"].read())
        start = document["baseModel"]["test"]["preference_accuracy"]
        print(f"\nDPO test metrics {test}; the starting model's test preference accuracy {start}")
        assert start <= GATE - 0.2, document["baseModel"]
        assert test["preference_accuracy"] > start, (test, document["baseModel"])
        assert document["gateMetrics"]["test_reward_accuracy"] == test["reward_accuracy"]
        assert document["dataset"]["schema"] == "preference" and document["dataset"]["records"]["test"] == 30

        # it started from the SFT run's adapter, merged, and published merged weights
        config = json.loads(s3.get_object(Bucket=bucket, Key="dpo/run-1/trainer_config.json")["Body"].read())
        assert config["baseModel"]["adapter"] == sft_model, config["baseModel"]
        model = json.loads(s3.get_object(Bucket=bucket, Key="dpo/run-1/model/finetune_config.json")["Body"].read())
        assert model["merged"] is True and model["baseModelUri"] == f"s3://{bucket}/model/", model
        assert model["trainerConfig"]["baseModel"]["adapter"] == sft_model, model["trainerConfig"]["baseModel"]
        published = status["published"]
        assert published["adapter"] is False and published["modelUri"] == status["artifacts"]["model"], published

        service = status["endpoint"]["url"].split("//", 1)[1].split(".", 1)[0]
        secret = status["serving"]["apiKeySecret"]  # generated by the operator: read as a user would
        key = base64.b64decode(cluster.core.read_namespaced_secret(secret, namespace).data["apiKey"]).decode()
        with port_forward(cluster.kubeconfig, namespace, service, 8000) as port:
            from openai import OpenAI

            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
            for _ in range(60):
                try:
                    client.models.list()
                    break
                except Exception:
                    time.sleep(1)
            rng = random.Random(99)  # questions of the data's kind, never trained on
            for _ in range(3):
                reply = client.chat.completions.create(
                    model=status["endpoint"]["model"],
                    max_tokens=1,
                    temperature=0,
                    logprobs=True,
                    top_logprobs=20,
                    messages=[{"role": "user", "content": prompt(rng)}],
                )
                assert reply.usage is not None and reply.usage.completion_tokens == 1, reply.usage
                first = reply.choices[0].logprobs
                assert first is not None and first.content, reply
                # the answer words among the 20 likeliest first tokens (each word is one token): a fruit leads
                words = [t.token.strip() for t in first.content[0].top_logprobs if t.token.strip() in FRUIT + COLOURS]
                print(f"served: answer words among the top 20 first tokens, likeliest first: {words}")
                assert words and words[0] in FRUIT, f"a fruit should rank above every colour: {words}"
