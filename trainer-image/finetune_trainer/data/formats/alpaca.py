"""`alpaca`: Stanford Alpaca's instruction / input / output records (plus an optional system prompt).

Rendered as a conversation with the base model's chat template, so the model serves through
`/v1/chat/completions` the way it was trained: the user turn is the instruction followed, after a blank
line, by the input (the context the instruction is about; Alpaca leaves it empty when there is none),
the assistant turn is the output, and only the output is learned.
"""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format, Turn, conversation


def normalize(fields: Fields) -> dict[str, Any]:
    instruction = fields.text("instruction", allow_empty=False)
    extra = fields.text("input", optional=True)
    output = fields.text("output", allow_empty=False)
    system = fields.text("system", optional=True)
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns = [Turn("system", system)] if system.strip() else []
    turns += [Turn("user", user), Turn("assistant", output, learn=True)]
    return conversation(fields, turns)


FORMAT = Format(
    name="alpaca",
    summary="alpaca: instruction, optional input, output (optional system); rendered as a chat, output learned",
    kind="messages",
    task="causal-lm",
    fields=("instruction", "input", "output", "system"),
    required=("instruction", "output"),
    example={
        "instruction": "Classify the sentiment of the review.",
        "input": "The parcel arrived two days early and well packed.",
        "output": "Positive",
    },
    normalize=normalize,
    notes=("The user turn is `instruction`, then a blank line and `input` when `input` is not empty.",),
)
