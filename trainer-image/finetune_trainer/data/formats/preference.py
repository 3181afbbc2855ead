"""`preference`: a prompt with a chosen and a rejected answer (the shape DPO-style methods train on).

Validated and stored with the run's split now, so the data can be checked and audited; no method trains on
it yet (SFT has no use for the rejected answer), and asking to train on it is refused before any download
of the model. `prompt`, `chosen` and `rejected` are strings, or lists of {role, content} messages (the
conversational variant TRL documents).
"""

from __future__ import annotations

import json
from typing import Any

from finetune_trainer.data.formats.base import Fields, Format


def _part(fields: Fields, name: str) -> str:
    value = fields.raw(name)
    if isinstance(value, str):
        if not value.strip() and name != "prompt":
            raise fields.fail(f"field {fields.column(name)!r} is empty")
        return value
    messages = fields.items(name)
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str) and "content" in message):
            raise fields.fail(f"{fields.column(name)}[{index}] must be an object with 'role' and 'content'")
    return json.dumps(messages, ensure_ascii=False)


def normalize(fields: Fields) -> dict[str, Any]:
    return {"prompt": _part(fields, "prompt"), "chosen": _part(fields, "chosen"), "rejected": _part(fields, "rejected")}


FORMAT = Format(
    name="preference",
    summary="preference: prompt, chosen, rejected; validated and stored, not trained by lora/qlora/full SFT",
    kind="preference",
    task="causal-lm",
    fields=("prompt", "chosen", "rejected"),
    required=("prompt", "chosen", "rejected"),
    example={
        "prompt": "How do I reset my password?",
        "chosen": "Open Settings, choose Security, then Reset password.",
        "rejected": "Contact support.",
    },
    normalize=normalize,
    trainable=False,
)

PREFERENCE_UNSUPPORTED = (
    "preference training (DPO and similar methods, which learn from a chosen and a rejected answer) is not "
    "supported yet: lora, qlora and full fine-tune on one answer per prompt. The records are valid; to fine-tune "
    "now, train on the prompts with their chosen answers as chat or prompt-completion data"
)
"""The one message for preference data asked to train: the method that would use it is what is missing
(`training.inputs.refuse_untrainable` before any download, and tokenization as a last guard)."""
