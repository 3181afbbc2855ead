"""`sharegpt`: conversations as ShareGPT dumps and LLaMA-Factory / Axolotl datasets store them.

One record: `{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}], "system"?,
"tools"?}`. Speakers: human/user, gpt/assistant (and the other model names dumps use: chatgpt, bing, bard,
model), system; LLaMA-Factory's `function_call` (the model calls a tool: the value is a JSON object with
`name` and `arguments`) and `observation` (the tool's answer). A top-level `system` string becomes the
first turn. Every model turn is learned; an unknown speaker or key is refused, naming the message.
"""

from __future__ import annotations

import json
from typing import Any

from finetune_trainer.data.formats.base import Fields, Format, Turn, conversation

SPEAKERS: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "system": "system",
    "function_call": "assistant",
    "observation": "tool",
}
MESSAGE_KEYS = frozenset({"from", "value"})


def _call(value: str, where: str, fields: Fields) -> list[dict[str, Any]]:
    try:
        call = json.loads(value)
    except json.JSONDecodeError:
        call = None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise fields.fail(f"{where}: a function_call value must be a JSON object with 'name' and 'arguments'")
    arguments = call.get("arguments", {})
    return [{"type": "function", "function": {"name": call["name"], "arguments": arguments}}]


def turn(message: Any, where: str, fields: Fields) -> Turn:
    if not isinstance(message, dict):
        raise fields.fail(f"{where} must be an object with 'from' and 'value'")
    speaker = message.get("from")
    if speaker not in SPEAKERS:
        raise fields.fail(f"{where}: 'from' must be one of {', '.join(SPEAKERS)}, got {speaker!r}")
    unknown = sorted(set(message) - MESSAGE_KEYS)
    if unknown:
        raise fields.fail(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} (a ShareGPT turn has from, value)")
    value = message.get("value")
    if not isinstance(value, str):
        raise fields.fail(f"{where}: 'value' must be a string")
    if speaker == "function_call":
        return Turn("assistant", "", learn=True, tool_calls=_call(value, where, fields))
    role = SPEAKERS[speaker]
    return Turn(role, value, learn=role == "assistant")


def normalize(fields: Fields) -> dict[str, Any]:
    column = fields.column("conversations")
    turns = [turn(m, f"{column}[{i}]", fields) for i, m in enumerate(fields.items("conversations"))]
    system = fields.text("system", optional=True)
    if system.strip():
        if turns[0].role == "system":
            raise fields.fail("both a 'system' field and a system turn: keep one")
        turns.insert(0, Turn("system", system))
    tools = None
    if fields.has("tools"):
        raw = fields.raw("tools")
        tools = json.loads(raw) if isinstance(raw, str) and raw.strip().startswith("[") else raw
        if not isinstance(tools, list):
            raise fields.fail(f"field {fields.column('tools')!r} must be a list of tool descriptions (or its JSON)")
        tools = [t if "function" in t else {"type": "function", "function": t} for t in tools if isinstance(t, dict)]
    return conversation(fields, turns, tools or None)


FORMAT = Format(
    name="sharegpt",
    summary=(
        "sharegpt: conversations of {from, value} turns (human/gpt, system, function_call/observation), "
        "optional system and tools; model turns learned"
    ),
    kind="messages",
    task="causal-lm",
    fields=("conversations", "system", "tools"),
    required=("conversations",),
    example={
        "conversations": [
            {"from": "human", "value": "Can I change the delivery address after ordering?"},
            {"from": "gpt", "value": "Yes, until the parcel ships: open the order and choose Edit address."},
        ],
        "system": "You are the support assistant of an online shop.",
    },
    normalize=normalize,
)
