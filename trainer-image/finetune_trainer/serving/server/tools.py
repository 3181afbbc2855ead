"""Tool calls in a model's output: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` to OpenAI's shape.

Why this convention: it is how the chat templates in use render an assistant's tool calls, so it is what a model
fine-tuned on them emits: the trainer's default template (`data.chat_template.DEFAULT_CHAT_TEMPLATE`) and the
Qwen2/Hermes family write each call as a JSON object of `name` and `arguments` between these tags. A template
without the tags (SmolLM2's renders no tools at all) is refused for tool calling by `api` before generation.

`ToolCallSplitter` separates, while text streams, the content before the first `<tool_call>` (sent as it comes,
holding back only what could be the start of the tag) from the calls (held until the end, then parsed). Text that
does not parse as a call is given back as content, so nothing the model wrote is lost.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from finetune_trainer.serving.server.constraints import TOOL_CALL_CLOSE, TOOL_CALL_OPEN

_CALL = re.compile(re.escape(TOOL_CALL_OPEN) + r"(.*?)(?:" + re.escape(TOOL_CALL_CLOSE) + r"|$)", re.DOTALL)


def template_calls_tools(template: str) -> bool:
    """Whether a chat template writes tool calls with the tags this module parses."""
    return TOOL_CALL_OPEN in template


@dataclass(frozen=True)
class ParsedCall:
    name: str
    arguments: str
    """A JSON string, as OpenAI sends `function.arguments`."""
    id: str

    def openai(self, index: int | None = None) -> dict[str, Any]:
        call: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            call["index"] = index
        return call


def parse_tool_calls(text: str, names: set[str]) -> list[ParsedCall] | None:
    """The calls in `text` (everything from the first tag on), or None when any of them is not a JSON object with
    a known function `name` and object `arguments`."""
    calls = []
    for match in _CALL.finditer(text):
        try:
            body = json.loads(match.group(1).strip())
        except json.JSONDecodeError:
            return None
        if not isinstance(body, dict) or body.get("name") not in names:
            return None
        arguments = body.get("arguments", body.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append(
            ParsedCall(body["name"], json.dumps(arguments, ensure_ascii=False), f"call_{uuid.uuid4().hex[:24]}")
        )
    return calls or None


class ToolCallSplitter:
    """Content and tool calls of one choice, from its text deltas. `forced`: the output is a call (tool_choice
    required or named), so nothing is content."""

    def __init__(self, names: set[str], forced: bool = False) -> None:
        self._names = names
        self._forced = forced
        self._text = ""
        self._sent = 0
        self._calling = forced

    def push(self, delta: str) -> str:
        """Content that is final now."""
        self._text += delta
        if self._calling:
            return ""
        start = self._text.find(TOOL_CALL_OPEN, self._sent)
        if start >= 0:
            self._calling = True
            end = start
        else:
            end = len(self._text) - _partial_tag(self._text, self._sent)
        out = self._text[self._sent : end]
        self._sent = max(self._sent, end)
        return out

    def finish(self) -> tuple[str, list[ParsedCall] | None]:
        """The rest of the content and the calls (None: no call was made, or the text did not parse)."""
        rest = self._text[self._sent :]
        self._sent = len(self._text)
        if not self._calling:
            return rest, None
        calls = parse_tool_calls(rest, self._names)
        if calls is None:
            return rest, None
        return rest[: rest.find(TOOL_CALL_OPEN)] if TOOL_CALL_OPEN in rest else "", calls


def _partial_tag(text: str, since: int) -> int:
    """How many trailing characters of `text` could be the start of the opening tag."""
    for size in range(min(len(TOOL_CALL_OPEN) - 1, len(text) - since), 0, -1):
        if text.endswith(TOOL_CALL_OPEN[:size]):
            return size
    return 0
