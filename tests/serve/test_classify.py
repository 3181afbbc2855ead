"""/v1/classify on a sequence-classification model: labels from the model config, one result per input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.serve.conftest import MODEL_NAME, settings_for
from tests.serve.server import RunningServer, wait_ready
from tests.serve.tiny_models import LABELS


@pytest.fixture(scope="module")
def classifier_server(tiny_classifier_dir: Path) -> Iterator[RunningServer]:
    from finetune_trainer.serving.server.app import create_app

    app = create_app(settings_for(str(tiny_classifier_dir), task="sequence-classification"))
    with RunningServer(app) as server:
        assert wait_ready(server.url).status_code == 200
        yield server


def test_classify_returns_labels_and_scores_matching_the_model(
    classifier_server: RunningServer, tiny_classifier_dir: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the quick brown fox", "hello world, this is a longer sentence for padding", "日本語"]
    response = httpx.post(
        classifier_server.url + "/v1/classify", json={"model": MODEL_NAME, "input": texts}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier_dir)
    for text, item in zip(texts, body["data"], strict=True):
        assert set(item["scores"]) == set(LABELS)
        assert item["label"] in LABELS and item["score"] == max(item["scores"].values())
        with torch.no_grad():  # one by one, unpadded: batching must not change the answer
            expected = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1).tolist()
        assert [item["scores"][label] for label in LABELS] == pytest.approx(expected, abs=1e-4)
    assert body["usage"]["prompt_tokens"] == sum(len(tokenizer.encode(t)) for t in texts)


def test_classify_single_string_and_errors(classifier_server: RunningServer) -> None:
    one = httpx.post(classifier_server.url + "/v1/classify", json={"model": MODEL_NAME, "input": "hello"}, timeout=60)
    assert one.status_code == 200 and len(one.json()["data"]) == 1
    wrong_model = httpx.post(classifier_server.url + "/v1/classify", json={"model": "x", "input": "hi"}, timeout=60)
    assert wrong_model.status_code == 404
    completion = httpx.post(
        classifier_server.url + "/v1/completions", timeout=60, json={"model": MODEL_NAME, "prompt": "hi"}
    )
    assert completion.status_code == 400 and completion.json()["error"]["code"] == "wrong_task"


def test_classify_on_a_language_model_is_refused(lm_server: Any) -> None:
    response = httpx.post(lm_server.url + "/v1/classify", json={"model": MODEL_NAME, "input": "hi"}, timeout=60)
    assert response.status_code == 400 and response.json()["error"]["code"] == "wrong_task"
