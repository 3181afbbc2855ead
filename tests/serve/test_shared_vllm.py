"""The adapters sidecar against vLLM's real CPU build (the vLLM venv of hack/venv-vllm.sh), as a ModelServer's vLLM
pod runs it: runtime LoRA loading on (VLLM_ALLOW_RUNTIME_LORA_UPDATING), the operator's CPU flags, an API key.
One server of SmolLM2-135M-Instruct; the sidecar's pass loads three adapters from a desired list, each answers
under its own name through the official OpenAI client, one is replaced in place (load_inplace) while another
is streamed without a failed request, one is removed, and a foreign adapter loaded behind the sidecar's back
is unloaded by the next pass. ~6.5 GB of memory: one vLLM server at a time on a shared machine."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve import tiny_models
from tests.support.ports import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FTO_CACHE") or Path.home() / ".cache" / "finetune-operator")
VLLM_PYTHON = Path(os.environ.get("FTO_VLLM_VENV") or CACHE / "venv-vllm") / "bin" / "python"
KEY = "sk-vllm-shared"

pytestmark = [pytest.mark.timeout(1200)]


def _adapters(base: Path, root: Path, count: int) -> list[Path]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folders = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"),
        )
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0.0, 0.3)
        model.save_pretrained(str(root / f"a{seed}"))
        folders.append(root / f"a{seed}")
    return folders


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[Path]]]:
    from finetune_operator.builders.containers import VLLM_DEVICES
    from finetune_trainer.devtools import smollm2

    # the vLLM venv is made here when missing (CI makes it in the background: this waits for that install);
    # a failed install fails the test, never a skip
    subprocess.run([str(ROOT / "hack" / "venv-vllm.sh")], check=True, stdout=subprocess.DEVNULL, timeout=3000)
    assert VLLM_PYTHON.is_file(), f"hack/venv-vllm.sh made no vLLM venv at {VLLM_PYTHON}"
    base = smollm2.model_folder()
    root = tmp_path_factory.mktemp("vllm-shared")
    adapters = _adapters(base, root, 4)
    port = free_port()
    device = VLLM_DEVICES["cpu"]
    env = {
        **os.environ,
        **dict(device.env),
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_API_KEY": KEY,
        "VLLM_TARGET_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": "",
    }
    command = [
        str(VLLM_PYTHON),
        "-m",
        "vllm.entrypoints.openai.api_server",
        *("--model", str(base), "--served-model-name", "shared", "--enable-lora"),
        *("--max-loras", "4", "--max-cpu-loras", "4", "--max-lora-rank", "16"),
        *("--host", "127.0.0.1", "--port", str(port), "--max-num-seqs", "8", *device.args),
    ]
    log = (root / "vllm.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 900
        while True:
            assert process.poll() is None, (root / "vllm.log").read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "vLLM did not start"
            time.sleep(2)
        yield url, root, adapters
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


class _ConfigMaps:
    """The desired and report ConfigMaps in memory (the unit test of the module that talks to the API)."""

    def __init__(self, s3_bucket: Any) -> None:
        self.maps: dict[str, dict[str, str]] = {}
        self.s3_bucket = s3_bucket

    def want(self, adapters: list[tuple[str, int, Path]]) -> None:
        """The operator's entries for these (name, run, adapter folder): each published to S3 as the trainer
        does, under its FineTuneJob's output (`team-a/NAME/run-N/model/`, or `NAMESPACE/NAME` from another)."""
        entries = []
        for name, run, folder in adapters:
            job = name if "/" in name else f"team-a/{name}"
            uri = tiny_models.publish(folder, self.s3_bucket.uri(f"{job}/run-{run}/model/"))
            entries.append({"name": name, "finetuneJob": job, "run": run, "uri": uri})
        self.maps["desired"] = {"adapters.json": json.dumps({"adapters": entries})}

    def data(self, name: str) -> dict[str, str]:
        return dict(self.maps.get(name, {}))

    def put_key(self, name: str, key: str, value: str) -> None:
        self.maps.setdefault(name, {})[key] = value


@pytest.mark.s3
def test_the_sidecar_drives_vllm(vllm: tuple[str, Path, list[Path]], tmp_path: Path, s3_bucket: Any) -> None:
    import httpx
    from finetune_trainer.serving.adapters.cli import EngineClient, sync_once
    from openai import OpenAI

    url, _, (a0, a1, a2, a3) = vllm
    engine = EngineClient(url, KEY)
    maps = _ConfigMaps(s3_bucket)
    maps.want([("alpha", 1, a0), ("beta", 1, a1), ("team-b/gamma", 1, a2)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    assert done and [a["name"] for a in state["adapters"]] == ["alpha", "beta", "team-b/gamma"], state
    client = OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    listed = {m.id: m for m in client.models.list().data}
    card = listed["alpha"].model_dump()  # vLLM's own card fields (not in the OpenAI client's model)
    assert card["parent"] == "shared" and "/run-1" in str(card["root"])

    def ask(model: str, tokens: int = 12) -> str:
        reply = client.completions.create(
            model=model, prompt="How do I reset my password?", max_tokens=tokens, temperature=0
        )
        assert reply.model == model
        return reply.choices[0].text

    answers = {m: ask(m) for m in ("shared", "alpha", "beta", "team-b/gamma")}
    assert len(set(answers.values())) == 4, answers  # four different models answering

    # alpha's run 2 (another adapter) replaces run 1 in place while beta is streamed: no request fails. The
    # windows before and after the swap are counted in answered rounds, not seconds, so "no failure" cannot
    # hold because nothing was asked.
    failures: list[str] = []
    rounds: list[float] = []  # when each round (beta, then alpha) was answered
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                ask("beta", 24)
                ask("alpha", 4)
                rounds.append(time.monotonic())
            except Exception as error:
                failures.append(f"{type(error).__name__}: {error}")

    def answered_since(moment: float, count: int) -> bool:
        assert not failures, failures[:3]
        return sum(1 for t in rounds if t > moment) >= count

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    wait_for("a round answered before the swap", lambda: answered_since(0.0, 1), timeout=600)
    maps.want([("alpha", 2, a3), ("beta", 1, a1), ("team-b/gamma", 1, a2)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    swapped = time.monotonic()
    # the round in flight across the swap answered (the new alpha's own answer is checked below)
    wait_for("a round answered after the swap", lambda: answered_since(swapped, 1), timeout=600)
    stop.set()
    asker.join(300)
    assert done and not failures, failures[:3]
    assert {a["name"]: a["run"] for a in state["adapters"]}["alpha"] == 2
    assert ask("alpha") != answers["alpha"]  # the new weights answer

    # removed from the list: unloaded; an adapter loaded behind the sidecar's back: unloaded by the next pass
    foreign = {"lora_name": "intruder", "lora_path": str(a0)}
    httpx.post(
        url + "/v1/load_lora_adapter", json=foreign, headers={"Authorization": f"Bearer {KEY}"}
    ).raise_for_status()
    unauthenticated = httpx.post(url + "/v1/unload_lora_adapter", json={"lora_name": "beta"})
    assert unauthenticated.status_code == 401  # the key guards vLLM's runtime LoRA routes
    maps.want([("alpha", 2, a3), ("beta", 1, a1)])
    state, done = sync_once(maps, engine, "desired", tmp_path, "team-a")  # type: ignore[arg-type]
    assert done and [a["name"] for a in state["adapters"]] == ["alpha", "beta"]
    assert set(m.id for m in client.models.list().data) == {"shared", "alpha", "beta"}
