"""One vLLM CPU server of SmolLM2-135M-Instruct for the serve tier, started once per package (tests/serve/conftest.py's
`vllm` fixture): the shared-server tests (test_shared_vllm.py) and the parameter conformance against vLLM
(test_shared_vllm_conformance.py) ask the same server, since one start costs minutes on two cores and ~6.5 GB. It is
run as a ModelServer's vLLM pod runs it: runtime LoRA loading on (VLLM_ALLOW_RUNTIME_LORA_UPDATING), the operator's
CPU flags, an API key, served as `shared`, with four random LoRA adapters written beside it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("FTO_CACHE") or Path.home() / ".cache" / "finetune-operator")
VLLM_PYTHON = Path(os.environ.get("FTO_VLLM_VENV") or CACHE / "venv-vllm") / "bin" / "python"
KEY = "sk-vllm-shared"
SERVED_NAME = "shared"


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


def running_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, list[Path]]]:
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
        *("--model", str(base), "--served-model-name", SERVED_NAME, "--enable-lora"),
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
