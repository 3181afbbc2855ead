"""Every parameter of OpenAI's chat and legacy completions APIs, through the official `openai` client against our
server: each one either works as OpenAI documents it or raises `openai.BadRequestError` naming it. None is
accepted and ignored. The parameter lists come from the installed `openai` package's own request types, so a new
OpenAI parameter fails `test_every_openai_parameter_has_a_decision` until it is decided here (and in the server).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serve import tiny_models
from tests.serve.conftest import MODEL_NAME, settings_for
from tests.serve.server import RunningServer


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tiny LM with a 1024-token context (a tool list takes a few hundred of its byte-sized tokens), served."""
    from finetune_trainer.serving.server import loader
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.engine import Engine

    folder = tiny_models.build_causal_lm(tmp_path_factory.mktemp("tiny-lm-1k"), positions=1024)
    settings = settings_for(str(folder))
    engine = Engine(loader.load(settings.config, Path("/nonexistent"), "cpu"), max_batch_size=8).start()
    try:
        with RunningServer(create_app(settings, engine=engine)) as server:
            yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    finally:
        engine.stop()


CHAT_WORKS = {
    "messages", "model", "n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "stop", "seed",
    "stream_options", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
    "tools", "tool_choice", "parallel_tool_calls", "response_format", "modalities", "service_tier",
}  # fmt: skip
"""Honoured (each has a test below); `modalities` only ['text'], `service_tier` only auto/default."""

CHAT_REFUSED: dict[str, Any] = {
    "audio": {"voice": "alloy", "format": "mp3"},
    "function_call": "auto",
    "functions": [{"name": "f", "parameters": {"type": "object"}}],
    "metadata": {"k": "v"},
    "moderation": {"model": "omni-moderation-latest"},
    "prediction": {"type": "content", "content": "x"},
    "prompt_cache_key": "k",
    "prompt_cache_options": {"mode": "auto"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "low",
    "safety_identifier": "someone",
    "store": True,
    "user": "someone",
    "verbosity": "low",
    "web_search_options": {},
}
"""A value of each refused parameter that asks for something (a neutral one, store=false, passes)."""

COMPLETION_WORKS = {
    "model", "prompt", "n", "max_tokens", "temperature", "top_p", "stop", "seed", "stream_options",
    "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "echo", "best_of",
}  # fmt: skip
COMPLETION_REFUSED: dict[str, Any] = {"suffix": " end", "user": "someone"}

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]


def openai_fields(module: Any) -> set[str]:
    return set(module.CompletionCreateParamsBase.__annotations__)


def test_every_openai_parameter_has_a_decision() -> None:
    from openai.types import completion_create_params
    from openai.types.chat import completion_create_params as chat_params

    assert openai_fields(chat_params) == CHAT_WORKS | set(CHAT_REFUSED)
    assert openai_fields(completion_create_params) == COMPLETION_WORKS | set(COMPLETION_REFUSED)


def chat(client: Any, **extra: Any) -> Any:
    arguments: dict[str, Any] = {"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 12, "temperature": 0}
    return client.chat.completions.create(**{**arguments, **extra})


def refused(call: Any, param: str) -> dict[str, Any]:
    with pytest.raises(openai.BadRequestError) as caught:
        call()
    body: dict[str, Any] = caught.value.body
    assert caught.value.status_code == 400 and body["type"] == "invalid_request_error"
    assert body["param"] == param, body
    return body


@pytest.mark.parametrize("name", sorted(CHAT_REFUSED))
def test_refused_chat_parameter_is_a_400_naming_it(client: Any, name: str) -> None:
    refused(lambda: chat(client, **{name: CHAT_REFUSED[name]}), name)


@pytest.mark.parametrize("name", sorted(COMPLETION_REFUSED))
def test_refused_completion_parameter_is_a_400_naming_it(client: Any, name: str) -> None:
    value = COMPLETION_REFUSED[name]
    refused(lambda: client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, **{name: value}), name)


def test_neutral_values_of_refused_parameters_pass(client: Any) -> None:
    assert chat(client, store=False, modalities=["text"], service_tier="auto").choices[0].message.role == "assistant"
    refused(lambda: chat(client, modalities=["text", "audio"]), "modalities")
    refused(lambda: chat(client, service_tier="flex"), "service_tier")


def test_unknown_fields_are_refused_by_name(client: Any) -> None:
    refused(lambda: chat(client, extra_body={"best_of": 2}), "best_of")
    refused(lambda: chat(client, extra_body={"guided_json": {}}), "guided_json")
    refused(lambda: client.completions.create(model=MODEL_NAME, prompt="hi", extra_body={"top_k": 3}), "top_k")
    odd = [{"role": "user", "content": "hi", "weight": 1}]
    refused(lambda: chat(client, messages=odd), "messages.0.weight")
    refused(lambda: chat(client, stream=True, stream_options={"include_usage": True, "x": 1}), "stream_options.x")


def test_message_fields_that_cannot_reach_the_model_are_refused(client: Any) -> None:
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]
    refused(lambda: chat(client, messages=image), "messages[0].content[0]")
    refused(lambda: chat(client, messages=[{"role": "tool", "content": "42"}]), "messages[0].tool_call_id")
    refused(lambda: chat(client, messages=[{"role": "function", "name": "f", "content": "1"}]), "messages[0].role")
    refused(lambda: chat(client, stream_options={"include_usage": True}), "stream_options")
    refused(lambda: chat(client, top_logprobs=2), "top_logprobs")
    refused(lambda: chat(client, tool_choice="auto"), "tool_choice")
    refused(lambda: chat(client, tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0]")


def test_n_choices_each_with_its_own_sample(client: Any) -> None:
    reply = chat(client, n=3, temperature=1.5, seed=11, max_tokens=16)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    texts = [c.message.content for c in reply.choices]
    assert len(set(texts)) > 1  # sampled independently
    assert [c.message.content for c in chat(client, n=3, temperature=1.5, seed=11, max_tokens=16).choices] == texts
    assert reply.usage.completion_tokens == sum(
        chat(client, temperature=1.5, seed=11 + i, max_tokens=16).usage.completion_tokens for i in range(3)
    )
    greedy = chat(client, n=2)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    streamed: dict[int, str] = {0: "", 1: "", 2: ""}
    for part in chat(client, n=3, temperature=1.5, seed=11, max_tokens=16, stream=True):
        for choice in part.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert [streamed[i] for i in range(3)] == texts
    completions = client.completions.create(model=MODEL_NAME, prompt=["hello", "the quick"], n=2, max_tokens=5)
    assert [c.index for c in completions.choices] == [0, 1, 2, 3]


def test_chat_logprobs_and_top_logprobs(client: Any) -> None:
    reply = chat(client, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    text = b"".join(bytes(item.bytes) for item in content).decode("utf-8", errors="replace")
    assert text == reply.choices[0].message.content  # the raw bytes (a random model writes broken characters)
    for item in content:
        assert item.logprob <= 0 and len(item.top_logprobs) == 3
        assert item.top_logprobs[0].token == item.token  # greedy: the chosen token is the most likely one
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)
        if not item.token.startswith("bytes:"):
            assert bytes(item.bytes) == item.token.encode()
    plain = chat(client, logprobs=True)
    assert all(item.top_logprobs == [] for item in plain.choices[0].logprobs.content)
    assert chat(client).choices[0].logprobs is None
    streamed = [
        item for part in chat(client, logprobs=True, top_logprobs=3, stream=True) for choice in part.choices
        if choice.logprobs for item in choice.logprobs.content
    ]  # fmt: skip
    assert [(i.token, round(i.logprob, 4)) for i in streamed] == [(i.token, round(i.logprob, 4)) for i in content]


def test_completion_logprobs_and_echo(client: Any) -> None:
    result = client.completions.create(model=MODEL_NAME, prompt="hello world", max_tokens=8, temperature=0, logprobs=2)
    logprobs = result.choices[0].logprobs
    assert len(logprobs.tokens) == result.usage.completion_tokens
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert logprobs.text_offset[0] == 0
    for token, value, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert len(top) <= 2 and top[token] == pytest.approx(value) and value == pytest.approx(max(top.values()))
    echoed = client.completions.create(model=MODEL_NAME, prompt="hello world", max_tokens=8, temperature=0, echo=True)
    assert echoed.choices[0].text == "hello world" + result.choices[0].text
    refused(
        lambda: client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, echo=True, logprobs=1), "echo"
    )
    refused(lambda: client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, best_of=3), "best_of")
    assert len(client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=2, n=2, best_of=2).choices) == 2


def test_logit_bias_and_penalties_change_what_is_sampled(client: Any) -> None:
    forced = client.completions.create(
        model=MODEL_NAME, prompt="hello", max_tokens=6, temperature=0, logit_bias={"42": 100}, logprobs=0
    )
    tokens = forced.choices[0].logprobs.tokens
    assert len(set(tokens)) == 1 and len(tokens) == 6  # token 42 every time
    refused(lambda: chat(client, logit_bias={"100000": 5}), "logit_bias")
    plain = client.completions.create(model=MODEL_NAME, prompt="the lazy dog", max_tokens=40, temperature=0)
    penalised = client.completions.create(
        model=MODEL_NAME,
        prompt="the lazy dog",
        max_tokens=40,
        temperature=0,
        frequency_penalty=2.0,
        presence_penalty=2.0,
    )
    assert penalised.choices[0].text != plain.choices[0].text


SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "blue"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}


def test_response_format_json_schema_is_enforced(client: Any) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    for seed in (1, 2, 3):
        reply = chat(client, response_format=response_format, max_tokens=60, temperature=1.0, seed=seed)
        assert reply.choices[0].finish_reason == "stop"
        value = json.loads(reply.choices[0].message.content)
        assert set(value) == {"ok", "colour"} and isinstance(value["ok"], bool) and value["colour"] in ("red", "blue")
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in chat(client, response_format=response_format, max_tokens=60, stream=True)
    )
    assert json.loads(streamed)["colour"] in ("red", "blue")
    refused(lambda: chat(client, response_format={"type": "json_schema"}), "response_format.json_schema")


def test_response_format_json_object_starts_an_object(client: Any) -> None:
    reply = chat(client, response_format={"type": "json_object"}, max_tokens=40)
    text = reply.choices[0].message.content
    assert text.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    assert not chat(client, max_tokens=40).choices[0].message.content.startswith("{")  # not by chance


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "set_light",
            "description": "switch the light",
            "parameters": SCHEMA,
        },
    },
    {
        "type": "function",
        "function": {"name": "ring", "parameters": {"type": "object", "properties": {}, "additionalProperties": False}},
    },
]


def test_a_named_tool_choice_returns_a_valid_call(client: Any) -> None:
    choice = {"type": "function", "function": {"name": "set_light"}}
    reply = chat(client, tools=TOOLS, tool_choice=choice, max_tokens=200)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert message.content is None and len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call.type == "function" and call.function.name == "set_light" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    assert set(arguments) == {"ok", "colour"}
    chunks = list(chat(client, tools=TOOLS, tool_choice=choice, max_tokens=200, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(deltas) == 1 and deltas[0].tool_calls[0].function.name == "set_light"
    assert json.loads(deltas[0].tool_calls[0].function.arguments) == arguments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    refused(
        lambda: chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"
    )


def test_a_required_tool_choice_calls_one_of_the_tools(client: Any) -> None:
    for seed in (1, 2, 3):
        reply = chat(client, tools=TOOLS, tool_choice="required", max_tokens=200, temperature=1.0, seed=seed)
        (call,) = reply.choices[0].message.tool_calls
        assert call.function.name in ("set_light", "ring")
        json.loads(call.function.arguments)


def test_tools_are_rendered_and_none_or_auto_answers_in_text(client: Any) -> None:
    without = chat(client)
    with_tools = chat(client, tools=TOOLS, tool_choice="none")
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 20  # the tool list is in the prompt
    assert with_tools.choices[0].message.tool_calls is None
    auto = chat(client, tools=TOOLS, parallel_tool_calls=False)
    assert auto.choices[0].finish_reason in ("stop", "length")  # a random model makes no call: plain text
    refused(lambda: chat(client, tools=TOOLS, response_format={"type": "json_object"}), "response_format")


def test_streamed_completions_carry_logprobs_echo_and_every_choice(client: Any) -> None:
    arguments: dict[str, Any] = {"model": MODEL_NAME, "prompt": "hello world", "max_tokens": 8, "temperature": 0}
    whole = client.completions.create(**arguments, logprobs=1, n=2)
    tokens: dict[int, list[str]] = {0: [], 1: []}
    texts: dict[int, str] = {0: "", 1: ""}
    for part in client.completions.create(**arguments, logprobs=1, n=2, stream=True):
        for choice in part.choices:
            texts[choice.index] += choice.text
            if choice.logprobs:
                tokens[choice.index] += choice.logprobs.tokens
    for index in (0, 1):
        assert texts[index] == whole.choices[index].text
        assert tokens[index] == whole.choices[index].logprobs.tokens
    echoed = "".join(
        part.choices[0].text for part in client.completions.create(**arguments, echo=True, stream=True) if part.choices
    )
    assert echoed == "hello world" + whole.choices[0].text
