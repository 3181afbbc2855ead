"""`openai-preference`: OpenAI's DPO fine-tuning file format, for `method.objective: dpo` or `simpo`.

One record: `{"input": {"messages": [...]}, "preferred_output": [{"role": "assistant", "content": ...}],
"non_preferred_output": [...]}`. The input's messages are the prompt (system, user and earlier assistant
turns, ending with the user's); the two outputs are the assistant's replies. Tools and tool calls in the
input are refused by name (not trained on yet) instead of dropped.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format
from finetune_trainer.data.formats.preference import messages, pair

INPUT_KEYS = frozenset({"messages"})
NOT_YET = frozenset({"tools", "parallel_tool_calls"})


def normalize(fields: Fields) -> dict[str, Any]:
    column = fields.column("input")
    given = fields.raw("input")
    if not isinstance(given, dict):
        raise fields.fail(f"field {column!r} must be an object with 'messages'")
    for key in given:
        if key in NOT_YET:
            raise fields.fail(f"{column}.{key}: tools are not supported for preference tuning yet; leave them out")
        if key not in INPUT_KEYS:
            raise fields.fail(f"{column}: unknown key {key!r} (the input has 'messages')")
    if "messages" not in given:
        raise fields.fail(f"field {column!r} has no 'messages'")
    names = {name: fields.column(name) for name in ("preferred_output", "non_preferred_output")}
    prompt = messages(fields, given["messages"], f"{column}.messages", answer=False)
    chosen = messages(fields, fields.raw("preferred_output"), names["preferred_output"], answer=True)
    rejected = messages(fields, fields.raw("non_preferred_output"), names["non_preferred_output"], answer=True)
    return pair(fields, prompt, chosen, rejected, (names["preferred_output"], names["non_preferred_output"]))


FORMAT = Format(
    name="openai-preference",
    summary=(
        "openai-preference: OpenAI's DPO format (input.messages, preferred_output, non_preferred_output); "
        "for method.objective dpo or simpo"
    ),
    kind="preference",
    task="causal-lm",
    fields=("input", "preferred_output", "non_preferred_output"),
    required=("input", "preferred_output", "non_preferred_output"),
    example={
        "input": {"messages": [{"role": "user", "content": "How do I reset my password?"}]},
        "preferred_output": [{"role": "assistant", "content": "Open Settings, choose Security, then Reset password."}],
        "non_preferred_output": [{"role": "assistant", "content": "Contact support."}],
    },
    normalize=normalize,
    notes=("The outputs are lists of assistant messages, as OpenAI writes them.",),
)
