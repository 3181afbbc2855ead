"""The conformance test's parameters against vLLM's real CPU build, as the operator runs it (`engine: vllm`): each
parameter behaves as docs/serving.md says vLLM behaves, which is where it differs from our engine. `VLLM` holds
that column of the docs as data: "works" (checked like ours), "400" (refused, naming the parameter or not) or
"ignored" (vLLM answers 200 and the parameter has no effect; our engine refuses it). One vLLM server of
SmolLM2-135M-Instruct (~6 GB, minutes to start on two cores): one vLLM server at a time on a shared machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.serve.test_openai_conformance import (
    CHAT_REFUSED,
    CHAT_WORKS,
    COMPLETION_REFUSED,
    COMPLETION_WORKS,
    SCHEMA,
    TOOLS,
)
from tests.serve.test_shared_vllm import ROOT, VLLM_PYTHON
from tests.support.ports import free_port

pytestmark = [pytest.mark.timeout(1800)]

NAME = "smollm2"

VLLM: dict[str, str] = {
    **{name: "ignored" for name in CHAT_REFUSED},
    "reasoning_effort": "ignored",  # handed to the chat template, which SmolLM2's does not read
    "unknown field": "ignored",  # logged, not refused
    # every tool choice but none needs a --tool-call-parser (auto also --enable-auto-tool-choice), which the operator
    # does not set: vLLM's hermes parser wants <tool_call> as one token of the vocabulary, SmolLM2's has none
    "tool_choice auto": "400",
    "tool_choice required": "400",
    "tool_choice named": "400",
    "suffix": "400",  # only models with fill-in-the-middle rendering
    "best_of": "ignored",  # not a field of vLLM's completion request any more
    "modalities ['text', 'audio']": "ignored",
    "service_tier flex": "ignored",
}
"""vLLM 0.32's behaviour where it differs from ours (docs/serving.md, 'The OpenAI API parameter by parameter')."""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from finetune_operator.builders.containers import VLLM_DEVICES
    from finetune_trainer.devtools import smollm2

    subprocess.run([str(ROOT / "hack" / "venv-vllm.sh")], check=True, stdout=subprocess.DEVNULL, timeout=3000)
    assert VLLM_PYTHON.is_file(), f"hack/venv-vllm.sh made no vLLM venv at {VLLM_PYTHON}"
    base = smollm2.model_folder()
    root = tmp_path_factory.mktemp("vllm-conformance")
    port = free_port()
    device = VLLM_DEVICES["cpu"]
    env = {**os.environ, **dict(device.env), "VLLM_TARGET_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    command = [
        str(VLLM_PYTHON),
        *("-m", "vllm.entrypoints.openai.api_server", "--model", str(base), "--served-model-name", NAME),
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
        yield openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=300)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def chat(client: Any, **extra: Any) -> Any:
    arguments: dict[str, Any] = {"model": NAME, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    return client.chat.completions.create(**{**arguments, **extra})


def outcome(call: Any) -> str:
    """ "works"/"ignored" (a 200) or "400"."""
    try:
        call()
    except openai.BadRequestError:
        return "400"
    return "ignored"


def test_where_vllm_differs_it_behaves_as_documented(client: Any) -> None:
    seen = {name: outcome(lambda name=name: chat(client, **{name: CHAT_REFUSED[name]})) for name in CHAT_REFUSED}
    seen["unknown field"] = outcome(lambda: chat(client, extra_body={"no_such_field": 1}))
    seen["tool_choice auto"] = outcome(lambda: chat(client, tools=TOOLS, tool_choice="auto"))
    seen["tool_choice required"] = outcome(lambda: chat(client, tools=TOOLS, tool_choice="required"))
    named = {"type": "function", "function": {"name": "set_light"}}
    seen["tool_choice named"] = outcome(lambda: chat(client, tools=TOOLS, tool_choice=named))
    seen["suffix"] = outcome(lambda: client.completions.create(model=NAME, prompt="a", max_tokens=2, suffix="b"))
    seen["best_of"] = outcome(lambda: client.completions.create(model=NAME, prompt="a", max_tokens=2, best_of=3))
    seen["modalities ['text', 'audio']"] = outcome(lambda: chat(client, modalities=["text", "audio"]))
    seen["service_tier flex"] = outcome(lambda: chat(client, service_tier="flex"))
    seen["user"] = outcome(lambda: chat(client, user="someone"))
    expected = {name: VLLM[name] for name in seen}
    assert seen == expected
    assert set(COMPLETION_REFUSED) <= set(seen) and {"n", "logprobs"} <= CHAT_WORKS & COMPLETION_WORKS


def test_what_both_engines_honour_works_on_vllm(client: Any) -> None:
    reply = chat(client, n=2, logprobs=True, top_logprobs=2, seed=3, temperature=1.0)
    assert len(reply.choices) == 2
    content = reply.choices[0].logprobs.content
    assert content and all(len(item.top_logprobs) == 2 and item.logprob <= 0 for item in content)
    completion = client.completions.create(model=NAME, prompt="Paris is", max_tokens=4, temperature=0, logprobs=2)
    assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    value = json.loads(chat(client, response_format=response_format, max_tokens=40).choices[0].message.content)
    assert value["colour"] in ("red", "blue") and isinstance(value["ok"], bool)
    assert chat(client, tools=TOOLS, tool_choice="none").choices[0].message.tool_calls in (None, [])
    biased = client.completions.create(model=NAME, prompt="a", max_tokens=3, temperature=0, logit_bias={"42": 100})
    assert biased.choices[0].text  # a 200 with the bias applied
    assert chat(client, frequency_penalty=1.0, presence_penalty=1.0).choices[0].message.content is not None
