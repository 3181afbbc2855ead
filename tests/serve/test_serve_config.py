"""serve.json validation and settings from the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_trainer.core.errors import ConfigInvalid
from finetune_trainer.serving.server.config import ServeConfig, ServeSettings, load_serve_config

EXAMPLE = {
    "servedModelName": "support-bot",
    "task": "causal-lm",
    "baseModelUri": "s3://models/llama/",
    "modelUri": "s3://artifacts/team-a/support-bot/run-2/model/",
    "run": 2,
    "maxConcurrency": 8,
}


def test_the_contract_example_validates(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps(EXAMPLE))
    config = load_serve_config(path)
    assert (config.served_model_name, config.run, config.max_concurrency) == ("support-bot", 2, 8)
    assert config.model_dump(by_alias=True) == {**EXAMPLE, "maxAdapters": 0}  # 0: not a shared server


def test_unknown_and_invalid_fields_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({**EXAMPLE, "maxConcurency": 4, "task": "translation", "run": -1}))
    with pytest.raises(ConfigInvalid) as caught:
        load_serve_config(path)
    for field in ("maxConcurency", "task", "run"):
        assert field in caught.value.message


def test_unreadable_config_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigInvalid, match="not JSON"):
        load_serve_config(tmp_path / "bad.json")
    with pytest.raises(ConfigInvalid, match="cannot read"):
        load_serve_config(tmp_path / "missing.json")


def test_settings_from_the_environment() -> None:
    config = ServeConfig.model_validate(EXAMPLE)
    settings = ServeSettings.from_env(config, {"FTO_API_KEY": "k", "FTO_WORK_DIR": "/w", "FTO_DEVICE": "cpu"})
    assert (settings.api_key, settings.work_dir, settings.device) == ("k", Path("/w"), "cpu")
    assert ServeSettings.from_env(config, {"FTO_API_KEY": ""}).api_key is None
    with pytest.raises(ConfigInvalid, match="FTO_DEVICE"):
        ServeSettings.from_env(config, {"FTO_DEVICE": "tpu"})
