"""Dataset schemas: turn raw records into the logical fields a schema needs, with precise errors.

Why separate from reading: the same checks apply to every file format. A record missing a column names
the file, the line and the columns it does have; a chat record with a malformed message says which
message; a classification label outside the known set says which label and which labels are known.
Labels are mapped to ids once (sorted, or in the order the user listed them) and the mapping is
recorded with the model, so the server and the report agree with training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finetune_trainer.config import SCHEMA_FIELDS
from finetune_trainer.data import Record
from finetune_trainer.errors import DatasetInvalid

ROLES = frozenset({"system", "user", "assistant", "tool"})


def _text(value: Any, origin: str, column: str) -> str:
    if not isinstance(value, str):
        raise DatasetInvalid(f"{origin}: field {column!r} must be a string, got {type(value).__name__}")
    return value


def _messages(value: Any, origin: str, column: str) -> list[dict[str, str]]:
    if isinstance(value, str):  # a CSV cell or a double-encoded field
        import json

        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DatasetInvalid(f"{origin}: field {column!r} must be a list of messages") from None
    if not isinstance(value, list) or not value:
        raise DatasetInvalid(f"{origin}: field {column!r} must be a non-empty list of messages")
    messages = []
    for index, message in enumerate(value):
        where = f"{origin}: {column}[{index}]"
        if not isinstance(message, dict):
            raise DatasetInvalid(f"{where} must be an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DatasetInvalid(f"{where}: role must be one of {', '.join(sorted(ROLES))}, got {role!r}")
        if not isinstance(content, str):
            raise DatasetInvalid(f"{where}: 'content' must be a string")
        messages.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetInvalid(f"{origin}: field {column!r} has no assistant message to learn from")
    return messages


def _label(value: Any, origin: str, column: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise DatasetInvalid(
            f"{origin}: field {column!r} must be a non-empty string or an integer label, got {value!r}"
        )
    return str(value)


def normalize(records: Sequence[Record], schema: str, columns: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each record reduced to its schema's logical fields (`text`, `prompt`, `messages`, `label`...)."""
    fields = SCHEMA_FIELDS[schema]
    out = []
    for record in records:
        example: dict[str, Any] = {}
        for field in fields:
            column = columns.get(field, field)
            if column not in record.data or record.data[column] is None:
                available = ", ".join(sorted(str(k) for k in record.data)) or "none"
                raise DatasetInvalid(f"{record.origin}: missing field {column!r} (available: {available})")
            value = record.data[column]
            if field == "messages":
                example[field] = _messages(value, record.origin, column)
            elif field == "label":
                example[field] = _label(value, record.origin, column)
            else:
                example[field] = _text(value, record.origin, column)
        out.append(example)
    return out


def label_names(train_labels: Sequence[str], configured: Sequence[str] | None, num_labels: int | None) -> list[str]:
    """The id -> name list: the configured labels in order, else the distinct train labels sorted.

    Integer-like labels sort numerically, so labels 0..9 keep their ids.
    """
    if configured:
        return list(configured)
    distinct = set(train_labels)
    numeric = all(label.lstrip("-").isdigit() for label in distinct)
    names = sorted(distinct, key=int) if numeric else sorted(distinct)
    if num_labels is not None and len(names) != num_labels:
        raise DatasetInvalid(
            f"dataset.train has {len(names)} distinct label(s) ({', '.join(names[:20])}) "
            f"but baseModel.numLabels is {num_labels}"
        )
    if len(names) < 2:
        raise DatasetInvalid(f"dataset.train has {len(names)} distinct label(s); a classifier needs at least 2")
    return names


def encode_labels(examples: Sequence[dict[str, Any]], origins: Sequence[str], names: Sequence[str]) -> list[int]:
    """The label id of each example; a label outside `names` is a user error naming its line."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for example, origin in zip(examples, origins, strict=True):
        label = example["label"]
        if label not in index:
            known = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
            raise DatasetInvalid(f"{origin}: unknown label {label!r} (known labels: {known})")
        ids.append(index[label])
    return ids
