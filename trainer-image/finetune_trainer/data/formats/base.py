"""What a dataset format is: its fields, how a record becomes a normalised example, how it is rendered.

Why one object per format: the trainer, the CRD enum, docs/datasets.md and the tests all derive from the
table in `finetune_trainer.data.formats`, so adding a format is one module there plus its tests. A format only
validates and normalises; rendering and loss masks are shared by `kind`, so two formats that are both
conversations (alpaca, sharegpt, chat) are masked by the same code:

- `completion`: `{"prompt": str, "completion": str}`; the completion is learned, the prompt is not
  (text is a completion with an empty prompt);
- `messages`: `{"conversation": <JSON of Conversation>}` rendered with the base model's chat template;
  each turn says whether it is learned (assistant turns, unless the data says otherwise);
- `classification`: `{"text": str, "label": str}`;
- `preference`: `{"prompt", "chosen", "rejected"}`, each the JSON of a list of messages (a `PreferencePair`):
  the prompt and two assistant replies, rendered with the chat template and trained by `method.objective: dpo`.

A conversation is kept as one JSON string in the example because Arrow (the `datasets` storage) infers one
struct type for a column, and turns differ in which optional keys (name, tool_calls) they carry.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from finetune_trainer.core.errors import DatasetInvalid

Kind = Literal["completion", "messages", "classification", "preference"]
Task = Literal["causal-lm", "sequence-classification"]


class Fields:
    """One record seen through the column mapping: `fields.text("prompt")` reads the mapped column.

    Every error names the record's origin (`s3://b/k line 17`) and the column as the data spells it.
    """

    def __init__(self, data: Mapping[str, Any], origin: str, columns: Mapping[str, str]) -> None:
        self.data, self.origin, self.columns = data, origin, columns

    def column(self, name: str) -> str:
        """The data's column for the logical field `name`."""
        return self.columns.get(name, name)

    def has(self, name: str) -> bool:
        return self.data.get(self.column(name)) is not None

    def raw(self, name: str) -> Any:
        """The value of a required field; a missing one names the columns the record does have."""
        column = self.column(name)
        if self.data.get(column) is None:
            available = ", ".join(sorted(str(k) for k in self.data)) or "none"
            mapped = f" (dataset.columns maps {name!r} to it)" if column != name else ""
            raise DatasetInvalid(f"{self.origin}: missing field {column!r}{mapped} (available: {available})")
        return self.data[column]

    def text(self, name: str, *, optional: bool = False, allow_empty: bool = True) -> str:
        """A string field; `optional` fields read as "" when absent or null."""
        if optional and not self.has(name):
            return ""
        value = self.raw(name)
        if not isinstance(value, str):
            raise DatasetInvalid(
                f"{self.origin}: field {self.column(name)!r} must be a string, got {type(value).__name__}"
            )
        if not allow_empty and not value.strip():
            raise DatasetInvalid(f"{self.origin}: field {self.column(name)!r} is empty")
        return value

    def items(self, name: str) -> list[Any]:
        """A list field; a string holding JSON (a CSV cell, a double-encoded column) is decoded first."""
        value = self.raw(name)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise DatasetInvalid(
                    f"{self.origin}: field {self.column(name)!r} must be a list (or a JSON list), got a string "
                    "that is not JSON"
                ) from None
        if hasattr(value, "tolist"):  # numpy arrays from parquet
            value = value.tolist()
        if not isinstance(value, list) or not value:
            raise DatasetInvalid(f"{self.origin}: field {self.column(name)!r} must be a non-empty list")
        return value

    def fail(self, message: str) -> DatasetInvalid:
        return DatasetInvalid(f"{self.origin}: {message}")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as the chat template sees it, plus whether its tokens are learned."""

    role: str
    content: str
    learn: bool = False
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def template_message(self) -> dict[str, Any]:
        """The message dict handed to `apply_chat_template` (optional keys only when set)."""
        message: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls is not None:
            message["tool_calls"] = self.tool_calls
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


@dataclass(frozen=True)
class Conversation:
    turns: list[Turn]
    tools: list[dict[str, Any]] | None = None

    def to_example(self) -> dict[str, str]:
        body = {"turns": [t.__dict__ for t in self.turns], "tools": self.tools}
        # keys keep the data's order: tool lists and tool calls are rendered with `tojson`, and a chat request to
        # the model server keeps its order too (sorting here made training see other text than serving)
        return {"conversation": json.dumps(body, ensure_ascii=False)}

    @classmethod
    def from_example(cls, example: Mapping[str, Any]) -> Conversation:
        body = json.loads(example["conversation"])
        return cls([Turn(**turn) for turn in body["turns"]], body.get("tools"))


@dataclass(frozen=True)
class PreferencePair:
    """A prompt's messages and two replies (assistant messages), the chosen one preferred."""

    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]

    def to_example(self) -> dict[str, str]:
        return {
            name: json.dumps(getattr(self, name), ensure_ascii=False, sort_keys=True)
            for name in ("prompt", "chosen", "rejected")
        }

    @classmethod
    def from_example(cls, example: Mapping[str, Any]) -> PreferencePair:
        return cls(json.loads(example["prompt"]), json.loads(example["chosen"]), json.loads(example["rejected"]))


def conversation(fields: Fields, turns: list[Turn], tools: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """The normalised example of a conversation; refuses one with nothing to learn from."""
    if not any(turn.learn for turn in turns):
        assistants = sum(1 for turn in turns if turn.role == "assistant")
        why = "has no assistant message" if not assistants else f"has {assistants} assistant message(s), all weight 0"
        raise fields.fail(f"the conversation {why}: nothing to learn from (add an assistant reply, or drop the record)")
    return Conversation(turns, tools).to_example()


@dataclass(frozen=True)
class Format:
    """A dataset format (the `dataset.schema` value) and everything the trainer needs to know about it."""

    name: str
    summary: str
    """One line for the CRD description and the docs."""
    kind: Kind
    task: Task
    fields: tuple[str, ...]
    """Every logical field the format reads (what `dataset.columns` may map)."""
    required: tuple[str, ...]
    """The fields every record must have: what detection looks for."""
    example: dict[str, Any]
    """A record as the format's own documentation shows it (docs/datasets.md shows the same)."""
    normalize: Callable[[Fields], dict[str, Any]]
    notes: tuple[str, ...] = field(default=())


def generation_unsupported(fmt: Format) -> str | None:
    """Why generation metrics cannot be computed for data of format `fmt` (None: they can)."""
    if fmt.task != "causal-lm":
        return f"dataset schema {fmt.name!r} is for classification; its test metrics are accuracy and f1"
    if fmt.kind == "messages" or (fmt.kind == "completion" and "prompt" in fmt.fields):
        return None
    if fmt.kind == "completion":
        return (
            f"dataset schema {fmt.name!r} has no prompts and no reference answers (every token is learned); "
            "generation metrics need chat, alpaca, sharegpt or prompt-completion data. Leave evaluation.generation "
            "out for this dataset"
        )
    return (
        f"dataset schema {fmt.name!r} is preference data: its test metrics are the reward accuracy and margin "
        "(generation metrics need chat, alpaca, sharegpt or prompt-completion data); leave evaluation.generation out"
    )


PREFERENCE_OBJECTIVES = ("dpo", "simpo")
"""The objectives that train on preference pairs (a chosen and a rejected answer per prompt)."""


def objective_mismatch(fmt: Format, objective: str) -> str | None:
    """Why data of format `fmt` cannot train with `method.objective` (None: it can)."""
    if fmt.kind == "preference" and objective not in PREFERENCE_OBJECTIVES:
        return (
            f"dataset.schema {fmt.name}: preference pairs (a chosen and a rejected answer) train with "
            "method.objective dpo (or simpo); set it, or train sft on chat or prompt-completion data with the "
            "chosen answers"
        )
    if fmt.kind != "preference" and objective in PREFERENCE_OBJECTIVES:
        return (
            f"method.objective {objective}: needs preference data (schema preference or openai-preference: a "
            f"prompt with a chosen and a rejected answer); dataset.schema {fmt.name} has one answer per prompt "
            "(use objective sft)"
        )
    return None
