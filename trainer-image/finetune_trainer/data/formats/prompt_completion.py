"""`prompt-completion`: the model learns the completion given the prompt (OpenAI's legacy format)."""

from __future__ import annotations

from typing import Any

from finetune_trainer.data.formats.base import Fields, Format


def normalize(fields: Fields) -> dict[str, Any]:
    return {"prompt": fields.text("prompt"), "completion": fields.text("completion", allow_empty=False)}


FORMAT = Format(
    name="prompt-completion",
    summary="prompt-completion: prompt and completion columns; only the completion is learned",
    kind="completion",
    task="causal-lm",
    fields=("prompt", "completion"),
    required=("prompt", "completion"),
    example={"prompt": "How do I reset my password?\n", "completion": "Open Settings, choose Security, then Reset."},
    normalize=normalize,
)
