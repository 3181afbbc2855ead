"""Our engine as a shared server (a ModelServer's pod): several peft adapters on one unmerged base, each
answering under its own name, in mixed batches, checked token for token against peft alone; an adapter
replaced while a request on it is in flight; the admin routes for the pod's sidecar only; and the sidecar's
pass (`finetune_trainer.serving.adapters.cli.sync_once`) converging a real running server to a desired list."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve import tiny_models
from tests.serve.server import RunningServer
from tests.serve.test_engine import Collector

PROMPTS = ("the quick brown", "a fine tuned", "serving models over")
BASE_NAME = "shared"


@pytest.fixture(scope="module")
def adapters(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three distinct adapters of the tiny LM (built once for the module)."""
    root = tmp_path_factory.mktemp("adapters")
    return {f"a{seed}": tiny_models.build_lora_adapter(tiny_lm_dir, root / f"a{seed}", seed=seed) for seed in (1, 2, 3)}


def _reference(base: Path, adapter: Path | None, prompts: tuple[str, ...], max_tokens: int) -> list[str]:
    """Greedy text of peft alone (the adapter merged into a fresh base), one prompt at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    model.eval()
    texts = []
    for prompt in prompts:
        ids = tokenizer.encode(prompt)
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids)),
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True))
    return texts


@pytest.fixture(scope="module")
def shared_engine(tiny_lm_dir: Path) -> Iterator[Any]:
    from finetune_trainer.serving.server import loader
    from finetune_trainer.serving.server.engine import Engine

    engine = Engine(loader.from_folder(tiny_lm_dir), max_batch_size=8).start()
    yield engine
    engine.stop()


def _submit(engine: Any, prompt: str, max_tokens: int, adapter: str | None) -> Collector:
    from finetune_trainer.serving.server.events import SamplingParams

    collector = Collector()
    ids = engine.loaded.tokenizer.encode(prompt)
    engine.submit(ids, SamplingParams(max_tokens, temperature=0.0), collector, adapter=adapter)
    return collector


def test_mixed_batches_answer_each_adapter_as_peft_alone(
    shared_engine: Any, tiny_lm_dir: Path, adapters: dict[str, Path]
) -> None:
    for name in ("a1", "a2"):
        shared_engine.load_adapter(name, str(adapters[name]), run=1).result(60)
    expected = {
        None: _reference(tiny_lm_dir, None, PROMPTS, 16),
        "a1": _reference(tiny_lm_dir, adapters["a1"], PROMPTS, 16),
        "a2": _reference(tiny_lm_dir, adapters["a2"], PROMPTS, 16),
    }
    assert expected["a1"] != expected["a2"] != expected[None]  # the adapters change the answers
    # every (adapter, prompt) at once: one batch mixing three adapters and the base
    collectors = {(a, p): _submit(shared_engine, p, 16, a) for a in expected for p in PROMPTS}
    for (adapter, prompt), collector in collectors.items():
        text, end = collector.result()
        assert end is not None and not hasattr(end, "message"), end
        assert text == expected[adapter][PROMPTS.index(prompt)], (adapter, prompt)
    assert set(shared_engine.adapters()) == {"a1", "a2"}


def test_a_swap_lets_requests_in_flight_finish_on_the_old_version(
    shared_engine: Any, tiny_lm_dir: Path, adapters: dict[str, Path]
) -> None:
    from finetune_trainer.serving.server.events import Finished, TextDelta

    shared_engine.load_adapter("swap", str(adapters["a1"]), run=1).result(60)
    old, new = (_reference(tiny_lm_dir, adapters[a], PROMPTS[:1], 200)[0] for a in ("a1", "a3"))
    assert old != new
    started = threading.Event()
    collector = Collector()
    original = collector.__call__

    def sink(event: Any) -> None:
        if isinstance(event, TextDelta):
            started.set()
        original(event)

    from finetune_trainer.serving.server.events import SamplingParams

    ids = shared_engine.loaded.tokenizer.encode(PROMPTS[0])
    shared_engine.submit(ids, SamplingParams(200, temperature=0.0), sink, adapter="swap")
    assert started.wait(60)
    shared_engine.load_adapter("swap", str(adapters["a3"]), run=2).result(60)  # while the request streams
    assert not collector.done.is_set()  # the swap happened mid-request (between two of its decode steps)
    after = _submit(shared_engine, PROMPTS[0], 200, "swap")
    text, end = collector.result()
    assert isinstance(end, Finished) and text == old  # no error, and the version it started with
    assert after.result()[0] == new and shared_engine.adapters()["swap"].run == 2
    shared_engine.unload_adapter("swap").result(60)
    assert "swap" not in shared_engine.adapters()
    failed = _submit(shared_engine, PROMPTS[0], 4, "swap").result()[1]
    assert failed is not None and "not loaded" in getattr(failed, "message", "")


def _shared_settings(tiny_lm_dir: Path, api_key: str | None = None, max_adapters: int = 2) -> Any:
    from finetune_trainer.serving.server.config import ServeConfig, ServeSettings

    config = ServeConfig.model_validate(
        {
            "servedModelName": BASE_NAME,
            "modelUri": str(tiny_lm_dir),
            "baseModelUri": str(tiny_lm_dir),
            "maxAdapters": max_adapters,
        }
    )
    return ServeSettings(config=config, api_key=api_key, work_dir=tiny_lm_dir, device="cpu")


def test_admin_routes_answer_only_the_pod_itself_with_the_key(
    tiny_lm_dir: Path, adapters: dict[str, Path], shared_engine: Any
) -> None:
    import httpx
    from fastapi.testclient import TestClient
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    key = "sk-shared-123"
    engine = Engine(from_folder(tiny_lm_dir), max_batch_size=4)
    app = create_app(_shared_settings(tiny_lm_dir, api_key=key), engine=engine)
    body = {"lora_name": "a1", "lora_path": str(adapters["a1"])}
    with TestClient(app) as remote:  # a client that is not on the loopback interface
        refused = remote.post("/v1/load_lora_adapter", json=body, headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 403
    with RunningServer(create_app(_shared_settings(tiny_lm_dir, api_key=key), engine=engine)) as server:
        auth = {"Authorization": f"Bearer {key}"}
        assert httpx.post(server.url + "/v1/load_lora_adapter", json=body).status_code == 401
        loaded = httpx.post(server.url + "/v1/load_lora_adapter", json={**body, "run": 4}, headers=auth, timeout=60)
        assert loaded.status_code == 200, loaded.text
        again = httpx.post(server.url + "/v1/load_lora_adapter", json=body, headers=auth, timeout=60)
        assert again.status_code == 400 and "already been loaded" in again.text
        missing = {"lora_name": "x", "lora_path": str(tiny_lm_dir)}
        assert httpx.post(server.url + "/v1/load_lora_adapter", json=missing, headers=auth).status_code == 400
        httpx.post(
            server.url + "/v1/load_lora_adapter",
            json={"lora_name": "a2", "lora_path": str(adapters["a2"])},
            headers=auth,
        ).raise_for_status()
        full = {"lora_name": "a3", "lora_path": str(adapters["a3"])}
        answer = httpx.post(server.url + "/v1/load_lora_adapter", json=full, headers=auth)
        assert answer.status_code == 400 and "maximum of 2" in answer.text
        cards = httpx.get(server.url + "/v1/models", headers=auth).json()["data"]
        assert [(c["id"], c.get("parent"), c.get("run")) for c in cards] == [
            (BASE_NAME, None, None),
            ("a1", BASE_NAME, 4),
            ("a2", BASE_NAME, None),
        ]
        assert cards[1]["root"] == str(adapters["a1"])
        import openai

        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)
        reply = client.completions.create(model="a1", prompt=PROMPTS[0], max_tokens=8, temperature=0)
        assert reply.choices[0].text == _reference(tiny_lm_dir, adapters["a1"], PROMPTS[:1], 8)[0]
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="a9", prompt=PROMPTS[0], max_tokens=2)
        unload = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "a1"}, headers=auth)
        assert unload.status_code == 200
        gone = httpx.post(server.url + "/v1/unload_lora_adapter", json={"lora_name": "a1"}, headers=auth)
        assert gone.status_code == 404
    engine.stop()


class _ConfigMaps:
    """The two ConfigMaps the sidecar reads and writes, held in memory (this is the unit test of the module
    that talks to the API; the cluster tiers run it against the real API server)."""

    def __init__(self, adapters: list[dict[str, Any]]) -> None:
        self.maps: dict[str, dict[str, str]] = {"desired": {"adapters.json": json.dumps({"adapters": adapters})}}

    def data(self, name: str) -> dict[str, str]:
        return dict(self.maps.get(name, {}))

    def put_key(self, name: str, key: str, value: str) -> None:
        self.maps.setdefault(name, {})[key] = value


def test_the_sidecar_converges_a_running_server_to_the_desired_list(
    tiny_lm_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    from finetune_trainer.serving.adapters.cli import EngineClient, sync_once
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.engine import Engine
    from finetune_trainer.serving.server.loader import from_folder

    engine = Engine(from_folder(tiny_lm_dir), max_batch_size=4)
    with RunningServer(create_app(_shared_settings(tiny_lm_dir, max_adapters=4), engine=engine)) as server:
        client = EngineClient(server.url, None)
        maps = _ConfigMaps(
            [
                {"name": "bot", "run": 1, "uri": str(adapters["a1"])},
                {"name": "team-b/bot", "run": 3, "uri": str(adapters["a2"])},
            ]
        )
        state, done = sync_once(maps, client, "desired", tmp_path)  # type: ignore[arg-type]
        assert done and state == {
            "adapters": [
                {"name": "bot", "run": 1, "uri": str(adapters["a1"])},
                {"name": "team-b/bot", "run": 3, "uri": str(adapters["a2"])},
            ],
            "errors": {},
        }
        # a new run of bot, team-b/bot gone, a broken one reported by name while the others converge
        maps.maps["desired"]["adapters.json"] = json.dumps(
            {
                "adapters": [
                    {"name": "bot", "run": 2, "uri": str(adapters["a3"])},
                    {"name": "broken", "run": 1, "uri": str(tmp_path / "nothing-here")},
                ]
            }
        )
        state, done = sync_once(maps, client, "desired", tmp_path)  # type: ignore[arg-type]
        assert not done and state["adapters"] == [{"name": "bot", "run": 2, "uri": str(adapters["a3"])}]
        assert list(state["errors"]) == ["broken"]
        assert sorted(p.name for p in tmp_path.glob("*/run-*")) == ["run-2"]  # the old versions' files are gone
        # the engine restarts empty (a new container): the next pass loads everything again
        for name in list(engine.adapters()):
            engine.unload_adapter(name).result(30)
        state, _ = sync_once(maps, client, "desired", tmp_path)  # type: ignore[arg-type]
        assert [a["name"] for a in state["adapters"]] == ["bot"] and engine.adapters()["bot"].run == 2
    engine.stop()
