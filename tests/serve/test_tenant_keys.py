"""Per-tenant keys on our engine as a shared server (a ModelServer's pod), through real uvicorn and the official
OpenAI client: the sidecar's copy of adapters.json gives each tenant's key (`keySha256`) the adapters of its own
entries; a tenant key reaches its adapter, gets 404 `model_not_found` for another tenant's (the answer a model that
does not exist gets), lists only its own; the server's key (the admin key) reaches every model; no key or a wrong
one is 401; a rewritten list takes effect on the next request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve import tiny_models
from tests.serve.server import RunningServer

ADMIN = "sk-admin-shared-0123"
TEAM_A, TEAM_B = "sk-tenant-a-4567", "sk-tenant-b-89ab"
BASE = "shared"


def _document(entries: list[tuple[str, str | None]]) -> str:
    from finetune_trainer.serving.auth import key_sha256

    adapters = []
    for name, key in entries:
        entry: dict[str, Any] = {"name": name, "finetuneJob": f"team/{name}", "run": 1, "uri": "s3://b/run-1/model/"}
        if key is not None:
            entry["keySha256"] = key_sha256(key)
        adapters.append(entry)
    return json.dumps({"server": f"team/{BASE}", "adapters": adapters})


@pytest.fixture(scope="module")
def server(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    root = tmp_path_factory.mktemp("tenants")
    adapters = {
        name: tiny_models.build_lora_adapter(tiny_lm_dir, root / name, seed=seed)
        for seed, name in ((1, "alpha"), (2, "beta"))
    }
    desired = root / ".adapters.json"
    desired.write_text(_document([("alpha", TEAM_A), ("beta", TEAM_B), ("gamma", None)]))
    config = ServeConfig.model_validate(
        {"servedModelName": BASE, "modelUri": str(tiny_lm_dir), "baseModelUri": str(tiny_lm_dir), "maxAdapters": 3}
    )
    settings = ServeSettings(
        config=config,
        api_key=ADMIN,
        work_dir=tiny_lm_dir,
        device="cpu",
        admin_token_file=root / ".admin-token",
        adapters_file=desired,
    )
    engine = Engine(from_folder(tiny_lm_dir), max_batch_size=4)
    with RunningServer(create_app(settings, engine=engine)) as running:
        for name, folder in adapters.items():
            engine.load_adapter(name, str(folder), run=1).result(60)
        yield running, desired
    engine.stop()


def _client(server: RunningServer, key: str) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _ask(server: RunningServer, key: str, model: str) -> Any:
    return _client(server, key).completions.create(model=model, prompt="the quick brown", max_tokens=4, temperature=0)


def test_a_tenant_key_reaches_its_own_adapter_only(server: tuple[RunningServer, Path]) -> None:
    import httpx
    import openai

    running, _ = server
    assert _ask(running, TEAM_A, "alpha").model == "alpha"
    chat = _client(running, TEAM_A).chat.completions.create(
        model="alpha", max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content is not None
    for model in ("beta", BASE, "gamma"):  # another tenant's, the base, one without a tenant key
        with pytest.raises(openai.NotFoundError) as caught:
            _ask(running, TEAM_A, model)
        assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    # not 403: the answer for another tenant's model is the one for a model nobody serves
    headers = {"Authorization": f"Bearer {TEAM_A}"}
    foreign = httpx.post(running.url + "/v1/completions", json={"model": "beta", "prompt": "x"}, headers=headers)
    absent = httpx.post(running.url + "/v1/completions", json={"model": "delta", "prompt": "x"}, headers=headers)
    assert foreign.status_code == absent.status_code == 404
    assert foreign.json()["error"]["message"].replace("beta", "X") == absent.json()["error"]["message"].replace(
        "delta", "X"
    )
    assert [m.id for m in _client(running, TEAM_A).models.list().data] == ["alpha"]
    assert [m.id for m in _client(running, TEAM_B).models.list().data] == ["beta"]
    assert _ask(running, TEAM_B, "beta").model == "beta"


def test_the_admin_key_reaches_every_model_and_others_get_401(server: tuple[RunningServer, Path]) -> None:
    import httpx
    import openai

    running, _ = server
    assert [m.id for m in _client(running, ADMIN).models.list().data] == [BASE, "alpha", "beta"]
    for model in (BASE, "alpha", "beta"):
        assert _ask(running, ADMIN, model).model == model
    for key in ("sk-wrong", TEAM_A + "x"):
        with pytest.raises(openai.AuthenticationError):
            _ask(running, key, "alpha")
    answer = httpx.get(running.url + "/v1/models")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"


def test_a_rewritten_list_moves_the_keys_at_once(server: tuple[RunningServer, Path]) -> None:
    import openai

    running, desired = server
    staging = desired.with_name("staging")
    staging.write_text(_document([("alpha", TEAM_B), ("beta", TEAM_B)]))  # alpha changed hands
    staging.rename(desired)
    with pytest.raises(openai.AuthenticationError):  # team A holds no entry any more: its key is unknown
        _ask(running, TEAM_A, "alpha")
    assert [m.id for m in _client(running, TEAM_B).models.list().data] == ["alpha", "beta"]
    desired.write_text(_document([("alpha", TEAM_A), ("beta", TEAM_B), ("gamma", None)]))
    assert _ask(running, TEAM_A, "alpha").model == "alpha"
