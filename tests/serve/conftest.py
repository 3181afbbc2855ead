"""Fixtures of the model-server tests: tiny models built once per session, engines, running servers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve import tiny_models
from tests.serve.server import RunningServer

API_KEY = "sk-test-0123456789"
MODEL_NAME = "support-bot"


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_causal_lm(tmp_path_factory.mktemp("tiny-lm"))


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_lora_adapter(tiny_lm_dir, tmp_path_factory.mktemp("tiny-adapter"))


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_models.build_classifier(tmp_path_factory.mktemp("tiny-classifier"))


def settings_for(
    model_uri: str,
    base_uri: str | None = None,
    *,
    task: str = "causal-lm",
    api_key: str | None = None,
    work_dir: Path = Path("/nonexistent"),
    run: int = 2,
) -> Any:
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings

    config = ServeConfig.model_validate(
        {
            "servedModelName": MODEL_NAME,
            "task": task,
            "modelUri": model_uri,
            "baseModelUri": base_uri,
            "run": run,
            "maxConcurrency": 8,
        }
    )
    return ServeSettings(config=config, api_key=api_key, work_dir=work_dir, device="cpu")


@pytest.fixture(scope="session")
def lm_engine(tiny_lm_dir: Path, tiny_adapter_dir: Path) -> Iterator[Any]:
    """The tiny LM with its LoRA adapter merged, behind one engine shared by the session's servers."""
    from finetune_trainer.serving.server import loader
    from finetune_trainer.serving.server.engine import Engine

    config = settings_for(str(tiny_adapter_dir), str(tiny_lm_dir)).config
    loaded = loader.load(config, Path("/nonexistent"), "cpu")
    engine = Engine(loaded, max_batch_size=8).start()
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def lm_server(lm_engine: Any, tiny_lm_dir: Path, tiny_adapter_dir: Path) -> Iterator[RunningServer]:
    """A server without an API key over the shared engine."""
    from finetune_trainer.serving.server.app import create_app

    app = create_app(settings_for(str(tiny_adapter_dir), str(tiny_lm_dir)), engine=lm_engine)
    with RunningServer(app) as server:
        yield server


@pytest.fixture
def client(lm_server: RunningServer) -> Any:
    import openai

    return openai.OpenAI(base_url=lm_server.url + "/v1", api_key="not-checked", max_retries=0, timeout=60)


@pytest.fixture(scope="package")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[Path]]]:
    """The serve tier's one vLLM CPU server (tests/serve/vllm_server.py): (url, its folder, four LoRA adapters)."""
    from tests.serve.vllm_server import running_vllm

    yield from running_vllm(tmp_path_factory)
