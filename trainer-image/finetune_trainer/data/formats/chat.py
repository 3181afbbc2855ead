"""`chat`: OpenAI's chat fine-tuning format, as OpenAI documents it.

One record: `{"messages": [...], "tools": [...]?}`. Messages have `role` (system, user, assistant, tool),
`content` (a string, or a list of `{"type": "text", "text": ...}` parts), and optionally `name`, `weight`
(assistant only, 0 or 1: OpenAI's "do not learn from this turn", honoured as a loss mask), `tool_calls`
(assistant) and `tool_call_id` (tool). Every assistant turn with weight 1 (the default) is learned; no other
turn is. Whatever a record carries that would not reach the model is refused here, naming the message,
instead of being dropped: non-text content parts, OpenAI's deprecated `function_call`/`functions`, unknown
keys. Whether the base model's chat template renders `name` and tool calls is checked at tokenization
(`finetune_trainer.data.chat_template.check_template`), since that depends on the model.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_trainer.data.formats.base import Fields, Format, Turn, conversation

ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id"})
DEPRECATED = {
    "function_call": "OpenAI deprecated function_call; write it as tool_calls",
    "refusal": "a refusal is not trained on; put the refusal text in content",
}


def content_text(value: Any, where: str, fields: Fields) -> str:
    """A message's content: a string, or OpenAI's list of text parts joined in order."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for index, part in enumerate(value):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise fields.fail(
                    f"{where}.content[{index}]: only text parts ({{'type': 'text', 'text': ...}}) can be trained "
                    f"on, got {kind!r}"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise fields.fail(f"{where}: 'content' must be a string or a list of text parts, got {type(value).__name__}")


def tool_calls(value: Any, where: str, fields: Fields) -> list[dict[str, Any]]:
    """OpenAI tool calls, with `arguments` decoded from its JSON string (what chat templates expect)."""
    if not isinstance(value, list) or not value:
        raise fields.fail(f"{where}: 'tool_calls' must be a non-empty list")
    calls = []
    for index, call in enumerate(value):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            shape = "{'type': 'function', 'function': {'name', 'arguments'}}"
            raise fields.fail(f"{where}.tool_calls[{index}] must be {shape}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError:
                raise fields.fail(f"{where}.tool_calls[{index}].function.arguments is not valid JSON") from None
        decoded = {"name": function["name"], "arguments": arguments}
        calls.append({"id": call.get("id"), "type": call.get("type", "function"), "function": decoded})
    return calls


def turn(message: Any, where: str, fields: Fields) -> Turn:
    if not isinstance(message, dict):
        raise fields.fail(f"{where} must be an object with 'role' and 'content'")
    role = message.get("role")
    if role not in ROLES:
        raise fields.fail(f"{where}: role must be one of {', '.join(ROLES)}, got {role!r}")
    for key in message:
        if key in DEPRECATED:
            raise fields.fail(f"{where}: {key!r} is not supported: {DEPRECATED[key]}")
        if key not in MESSAGE_KEYS:
            raise fields.fail(f"{where}: unknown key {key!r} (a chat message has {', '.join(sorted(MESSAGE_KEYS))})")
    weight = message.get("weight")
    if weight is not None:
        if role != "assistant":
            raise fields.fail(f"{where}: 'weight' applies to assistant messages only (this one is {role})")
        if isinstance(weight, bool) or weight not in (0, 1):
            raise fields.fail(f"{where}: 'weight' must be 0 (do not learn this turn) or 1, got {weight!r}")
    calls = None
    if message.get("tool_calls") is not None:
        if role != "assistant":
            raise fields.fail(f"{where}: 'tool_calls' belong to assistant messages (this one is {role})")
        calls = tool_calls(message["tool_calls"], where, fields)
    content = message.get("content")
    if content is None and calls is None:
        raise fields.fail(f"{where}: 'content' is missing (only an assistant message with tool_calls may omit it)")
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise fields.fail(f"{where}: 'name' must be a string")
    call_id = message.get("tool_call_id")
    if call_id is not None and not isinstance(call_id, str):
        raise fields.fail(f"{where}: 'tool_call_id' must be a string")
    text = "" if content is None else content_text(content, where, fields)
    return Turn(role, text, role == "assistant" and weight != 0, name, calls, call_id)


def turns_and_tools(fields: Fields) -> tuple[list[Turn], list[dict[str, Any]] | None]:
    """A record's messages as turns and its tool list, validated.

    Also how the model server reads a chat request's `messages` and `tools` (`serving.server.prompts`), so a
    conversation reaches the chat template in the same shape at training and at serving time."""
    column = fields.column("messages")
    turns = [turn(message, f"{column}[{i}]", fields) for i, message in enumerate(fields.items("messages"))]
    if fields.data.get("functions") is not None:
        raise fields.fail("'functions' is deprecated by OpenAI and not supported: describe them in 'tools'")
    tools = fields.items("tools") if fields.has("tools") else None
    for index, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("function"), dict):
            raise fields.fail(f"tools[{index}] must be {{'type': 'function', 'function': {{'name', 'parameters'}}}}")
    return turns, tools


def normalize(fields: Fields) -> dict[str, Any]:
    turns, tools = turns_and_tools(fields)
    return conversation(fields, turns, tools)


FORMAT = Format(
    name="chat",
    summary=(
        "chat: OpenAI's chat fine-tuning format (messages with system/user/assistant/tool roles, name, weight 0/1, "
        "text content parts, tool_calls and tools); assistant turns with weight 1 are learned"
    ),
    kind="messages",
    task="causal-lm",
    fields=("messages", "tools"),
    required=("messages",),
    example={
        "messages": [
            {"role": "system", "content": "You are the support assistant of an online shop."},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "It ships tomorrow.", "weight": 0},
            {"role": "user", "content": "That is not what the tracking page says."},
            {"role": "assistant", "content": "You are right: it left the warehouse today and arrives on Friday."},
        ]
    },
    normalize=normalize,
    notes=(
        "`weight: 0` on an assistant message keeps it as context but masks it from the loss.",
        "`name` and tool calls must be rendered by the base model's chat template; where the template ignores "
        "them the record is refused (the trainer's default template renders both).",
    ),
)
