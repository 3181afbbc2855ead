"""The conformance test's parameters against vLLM's real CPU build, as the operator runs it (`engine: vllm`): each
parameter behaves as docs/serving.md says vLLM behaves, which is where it differs from our engine. `VLLM` holds
that column of the docs as data: "works" (checked like ours), "400" (refused, naming the parameter or not) or
"ignored" (vLLM answers 200 and the parameter has no effect; our engine refuses it). One vLLM server of
SmolLM2-135M-Instruct, the one the shared-server tests ask (tests/serve/vllm_server.py), as its base model.
"""

from __future__ import annotations

import json
from pathlib import Path
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
from tests.serve.vllm_server import KEY, SERVED_NAME

pytestmark = [pytest.mark.timeout(1800)]

NAME = SERVED_NAME

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
def client(vllm: tuple[str, Path, list[Path]]) -> Any:
    """The official client on the serve tier's one vLLM server (tests/serve/vllm_server.py), as its base model."""
    url, _, _ = vllm
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)


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
