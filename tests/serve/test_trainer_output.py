"""The contract between trainer and server, end to end: what `python -m finetune_trainer train` writes to
`run-N/model/` in S3 is what the server loads, for a chat LoRA and for a LoRA classifier.

Both trainings are two steps long: the point is the folder layout (adapter, tokenizer with the training
chat template, finetune_config.json with task and labels), not the model's quality.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from tests.serve.conftest import MODEL_NAME, settings_for
from tests.serve.server import RunningServer, wait_ready
from tests.trainer.builders import build_tiny_llama, minilm_folder, put_jsonl, trainer_config, upload_folder

pytestmark = pytest.mark.s3

TOPICS = {
    "food": ["pasta sauce", "fresh bread", "apple pie"],
    "sport": ["tennis match", "marathon"],
    "weather": ["heavy rain", "snowfall", "strong wind"],
}


def train(config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.cli import run_train

    environment = {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(tmp_path / "hf-datasets"),
        "FTO_WORK_DIR": str(tmp_path / "train"),
        "FTO_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    assert run_train(path) == 0, (tmp_path / "termination-log").read_text()


def test_a_trained_chat_adapter_is_served(s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE

    base = build_tiny_llama(tmp_path / "base")
    base_uri = upload_folder(s3_bucket.client, s3_bucket.name, base, "models/tiny")
    rng = random.Random(1)
    chats = [
        {
            "messages": [
                {"role": "user", "content": f"what is {rng.choice(['one', 'two'])} ?"},
                {"role": "assistant", "content": rng.choice(["apple", "pear"])},
            ]
        }
        for _ in range(40)
    ]
    data = put_jsonl(s3_bucket.client, s3_bucket.name, "d.jsonl", chats)
    config = trainer_config(s3_bucket.name, base_uri, data)
    config["dataset"]["schema"] = "chat"
    config["hyperparameters"]["maxSteps"] = 2
    train(config, tmp_path, monkeypatch)

    app = create(settings_for(s3_bucket.uri("out/run-1/model/"), base_uri, work_dir=tmp_path / "serve"))
    with RunningServer(app) as server:
        assert wait_ready(server.url).status_code == 200
        state = app.state.model_state
        assert state.engine.loaded.tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE  # saved by the trainer
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=8, temperature=0
        )
        assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1


def test_a_trained_lora_classifier_is_served_with_its_labels(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base_uri = upload_folder(s3_bucket.client, s3_bucket.name, minilm_folder(), "models/minilm")
    rng = random.Random(2)
    rows = [
        {"text": f"the {rng.choice(TOPICS[label])} today", "label": label}
        for label in sorted(TOPICS)
        for _ in range(12)
    ]
    data = put_jsonl(s3_bucket.client, s3_bucket.name, "t.jsonl", rows)
    config = trainer_config(s3_bucket.name, base_uri, data)
    config["baseModel"] = {"uri": base_uri, "task": "sequence-classification"}
    config["dataset"].update({"schema": "classification", "maxSeqLength": 32})
    config["method"] = {"type": "lora", "lora": {"rank": 4, "alpha": 8, "dropout": 0.0}}
    config["hyperparameters"].update({"maxSteps": 2, "learningRate": 0.05})
    train(config, tmp_path, monkeypatch)

    settings = settings_for(
        s3_bucket.uri("out/run-1/model/"), base_uri, task="sequence-classification", work_dir=tmp_path / "serve"
    )
    with RunningServer(create(settings)) as server:
        assert wait_ready(server.url).status_code == 200
        texts = ["the heavy rain today", "a marathon"]
        response = httpx.post(server.url + "/v1/classify", json={"model": MODEL_NAME, "input": texts}, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [sorted(item["scores"]) for item in data] == [sorted(TOPICS)] * 2
    adapter = tmp_path / "serve" / "model"  # unmerged reference: base + adapter (trained head included)
    base = AutoModelForSequenceClassification.from_pretrained(
        minilm_folder(), num_labels=3, id2label=dict(enumerate(sorted(TOPICS))), ignore_mismatched_sizes=True
    )
    reference = PeftModel.from_pretrained(base, adapter).eval()
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    for text, item in zip(texts, data, strict=True):
        with torch.no_grad():
            expected = torch.softmax(reference(**tokenizer(text, return_tensors="pt")).logits[0], -1).tolist()
        assert [item["scores"][label] for label in sorted(TOPICS)] == pytest.approx(expected, abs=1e-4)


def create(settings: Any) -> Any:
    from finetune_trainer.serving.server.app import create_app

    return create_app(settings)
