"""API key checks, and readiness: /readyz is 503 until the model is loaded, /healthz 200 all along."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.serve.conftest import API_KEY, MODEL_NAME, settings_for
from tests.serve.server import RunningServer, wait_ready


def test_api_key_is_required_when_configured(lm_engine: Any, tiny_lm_dir: Path, tiny_adapter_dir: Path) -> None:
    from finetune_trainer.serving.server.app import create_app

    app = create_app(settings_for(str(tiny_adapter_dir), str(tiny_lm_dir), api_key=API_KEY), engine=lm_engine)
    with RunningServer(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong-key", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as caught:
            client.models.list()
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
        missing = httpx.post(server.url + "/v1/completions", json={"model": MODEL_NAME, "prompt": "x"}, timeout=30)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
        good = openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0)
        assert good.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, temperature=0).choices
        for probe in ("/healthz", "/readyz", "/metrics"):  # kubelet and Prometheus carry no key
            assert httpx.get(server.url + probe, timeout=30).status_code == 200


def test_not_ready_until_the_model_is_loaded(tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from finetune_trainer.serving.server import loader
    from finetune_trainer.serving.server.app import create_app

    release = threading.Event()
    real_load = loader.load

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        assert release.wait(60)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loader, "load", slow_load)
    app = create_app(settings_for(str(tiny_lm_dir)))  # full weights, no adapter
    with RunningServer(app) as server:
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
        not_ready = httpx.get(server.url + "/readyz", timeout=30)
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "loading"
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.InternalServerError) as caught:
            client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2)
        assert caught.value.status_code == 503
        assert caught.value.body["code"] == "model_not_ready"
        release.set()
        ready = wait_ready(server.url)
        assert ready.status_code == 200 and ready.json() == {"status": "ready", "model": MODEL_NAME, "run": 2}
        result = client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=3, temperature=0)
        assert result.usage.completion_tokens >= 1


def test_a_failed_load_is_reported_and_handed_to_the_cli(tmp_path: Path) -> None:
    from finetune_trainer.serving.server.app import create_app

    failures: list[BaseException] = []
    app = create_app(settings_for(str(tmp_path / "no-such-model")))
    app.state.on_load_failure = failures.append
    with RunningServer(app) as server:
        deadline = time.monotonic() + 30
        while not failures and time.monotonic() < deadline:
            time.sleep(0.05)
        response = httpx.get(server.url + "/readyz", timeout=30)
        assert response.status_code == 503
        assert response.json()["status"] == "failed" and "does not exist" in response.json()["error"]
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200
    assert failures and type(failures[0]).__name__ == "ModelNotFound"
