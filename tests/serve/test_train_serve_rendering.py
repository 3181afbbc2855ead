"""Train/serve parity of chat rendering: the same conversation, with `name`, a tool list, an assistant's tool calls
and a tool result, becomes the same token ids in the trainer (its `chat` data tokenized for training) and in the
server (the prompt of a chat request), for the trainer's default template and for a Qwen-style template; where a
model's template drops one of these fields, the trainer refuses the record and the server refuses the request
with a 400 naming the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.serve import tiny_models
from tests.serve.conftest import MODEL_NAME, settings_for
from tests.serve.server import RunningServer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "track",
            "description": "where a parcel is",
            "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]},
        },
    }
]

CONVERSATION = [
    {"role": "system", "content": "You are the shop's assistant."},
    {"role": "user", "name": "ana", "content": "Where is parcel 7?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "track", "arguments": '{"id": "7"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "in Lyon"},
    {"role": "assistant", "content": "It is in Lyon."},
]

QWEN_STYLE = (
    "{%- if tools %}{{ '<|im_start|>system\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}"
    "{{ '\n# Tools\n<tools>' }}{% for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    "{{ '\n</tools><|im_end|>\n' }}"
    "{%- elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- else %}{{ '<|im_start|>' + message['role'] }}{% if message.name %}{{ ' name=' + message.name }}{% endif %}"
    "{{ '\n' + (message['content'] or '') }}"
    "{%- for call in message.tool_calls or [] %}"
    '{{ \'\n<tool_call>\n{"name": "\' + call.function.name + \'", "arguments": \' }}'
    "{{ (call.function.arguments | tojson) + '}\n</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""The shape of Qwen2.5's template: tools in the system turn, calls as <tool_call> JSON, results as user turns."""

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""SmolLM2-135M-Instruct's own template (its GGUF's): it renders no name, no tools and no tool calls."""


def tokenizer_with(template: str | None) -> Any:
    from finetune_trainer.data.chat_template import ensure_chat_template

    tokenizer = tiny_models.train_tokenizer()
    if template is None:
        ensure_chat_template(tokenizer)  # what the trainer saves beside a model trained without a template
    else:
        tokenizer.chat_template = template
    return tokenizer


def trainer_tokens(tokenizer: Any, record: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Input ids and labels of one `chat` record, as the trainer tokenizes it for training."""
    from finetune_trainer.data.chat_template import check_template
    from finetune_trainer.data.formats.base import Fields
    from finetune_trainer.data.formats.chat import FORMAT
    from finetune_trainer.data.tokenization import causal_lm_batch

    example = FORMAT.normalize(Fields(record, "train.jsonl line 1", {}))
    check_template(tokenizer, [example], ["train.jsonl line 1"])
    batch = causal_lm_batch(tokenizer, "chat", 4096)({"conversation": [example["conversation"]]})
    return batch["input_ids"][0], batch["labels"][0]


def server_tokens(tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> list[int]:
    """The prompt ids of a chat request, as the server makes them from the request body."""
    from finetune_trainer.serving.server.prompts import encode_chat, template_messages
    from finetune_trainer.serving.server.protocol import ChatCompletionRequest

    body = ChatCompletionRequest.model_validate({"model": MODEL_NAME, "messages": messages, "tools": tools})
    body.check_supported()
    rendered, checked = template_messages([m.openai_dict() for m in body.messages], body.tool_list())
    return encode_chat(tokenizer, rendered, checked)


@pytest.mark.parametrize("template", [None, QWEN_STYLE], ids=["default-template", "qwen-style"])
def test_the_same_conversation_is_the_same_token_ids_at_train_and_serve_time(template: str | None) -> None:
    tokenizer = tokenizer_with(template)
    ids, labels = trainer_tokens(tokenizer, {"messages": CONVERSATION, "tools": TOOLS})
    prompt = server_tokens(tokenizer, CONVERSATION[:-1], TOOLS)
    assert ids[: len(prompt)] == prompt  # the server's prompt is the trainer's text up to the last answer
    assert labels[len(prompt) - 1] == -100 and labels[len(prompt)] != -100  # the answer starts right there
    text = tokenizer.decode(prompt)
    for piece in ("ana", "track", "<tool_call>", '"7"', "in Lyon", "where a parcel is"):
        assert piece in text, piece
    first_turn = server_tokens(tokenizer, CONVERSATION[:2], TOOLS)
    assert ids[: len(first_turn)] == first_turn  # the learned tool-call turn starts where that prompt ends
    assert labels[len(first_turn)] != -100


def test_each_field_changes_the_prompt() -> None:
    tokenizer = tokenizer_with(None)
    full = server_tokens(tokenizer, CONVERSATION[:-1], TOOLS)
    assert server_tokens(tokenizer, CONVERSATION[:-1], None) != full
    nameless = [{k: v for k, v in m.items() if k != "name"} for m in CONVERSATION[:-1]]
    assert server_tokens(tokenizer, nameless, TOOLS) != full


def test_a_template_that_drops_a_field_is_refused_by_trainer_and_server() -> None:
    from finetune_trainer.core.errors import DatasetInvalid
    from finetune_trainer.serving.server.protocol import APIError

    tokenizer = tokenizer_with(SMOLLM2)
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert server_tokens(tokenizer, plain[:1], None)  # what it does render is served
    cases = [
        ([{"role": "user", "name": "ana", "content": "hi"}, plain[1]], None, "messages[0].name", "'name'"),
        (plain, TOOLS, "tools", "tool list"),
        (
            [plain[0], {**CONVERSATION[2], "content": ""}, {**CONVERSATION[3]}, plain[1]],
            None,
            "messages[1].tool_calls",
            "tool calls",
        ),
    ]
    for messages, tools, param, wording in cases:
        with pytest.raises(APIError) as caught:
            server_tokens(tokenizer, messages[:-1] if param != "tools" else messages[:1], tools)
        assert caught.value.status == 400 and caught.value.param == param
        record: dict[str, Any] = {"messages": messages, **({"tools": tools} if tools else {})}
        with pytest.raises(DatasetInvalid, match=wording):
            trainer_tokens(tokenizer, record)


@pytest.fixture(scope="module")
def smollm2_style_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The tiny LM saved with SmolLM2's template, served."""
    from finetune_trainer.serving.server import loader
    from finetune_trainer.serving.server.app import create_app
    from finetune_trainer.serving.server.engine import Engine

    folder = tiny_models.build_causal_lm(tmp_path_factory.mktemp("tiny-lm-smollm2-template"), positions=1024)
    tokenizer_with(SMOLLM2).save_pretrained(folder)
    settings = settings_for(str(folder))
    engine = Engine(loader.load(settings.config, Path("/nonexistent"), "cpu")).start()
    try:
        with RunningServer(create_app(settings, engine=engine)) as server:
            yield openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)
    finally:
        engine.stop()


def test_over_http_the_prompt_is_the_trainers_and_dropped_fields_are_400s(
    client: Any, smollm2_style_client: Any, lm_engine: Any
) -> None:
    tokenizer = lm_engine.loaded.tokenizer  # no template saved: the server renders with the trainer's default
    reply = client.chat.completions.create(
        model=MODEL_NAME, messages=CONVERSATION[:2], tools=TOOLS, tool_choice="none", max_tokens=2
    )
    assert reply.usage.prompt_tokens == len(server_tokens(tokenizer, CONVERSATION[:2], TOOLS))
    named = [{"role": "user", "name": "ana", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as caught:
        smollm2_style_client.chat.completions.create(model=MODEL_NAME, messages=named, max_tokens=2)
    assert caught.value.body["param"] == "messages[0].name"
    with pytest.raises(openai.BadRequestError) as caught:
        smollm2_style_client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], tools=TOOLS, max_tokens=2
        )
    assert caught.value.body["param"] == "tools"
    served = smollm2_style_client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    plain = [{"role": "user", "content": "hi"}]
    assert served.usage.prompt_tokens == len(server_tokens(tokenizer_with(SMOLLM2), plain, None))
